"""envs/nanogpt: the shard format, the 124M config, the smoke run + eval, and the eval's leak check."""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import math
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from toolkit import jobenv
from toolkit.envs import load_env

ENV_DIR = Path(__file__).resolve().parents[2] / "envs" / "nanogpt"
CODE_DIR = ENV_DIR / "code"


def load_module(name: str, monkeypatch: pytest.MonkeyPatch, smoke: bool = False) -> ModuleType:
    """A fresh import of envs/nanogpt/code/<name>.py (it reads its settings from the environment)."""
    if smoke:
        monkeypatch.setenv("TOOLKIT_SMOKE", "1")
    else:
        monkeypatch.delenv("TOOLKIT_SMOKE", raising=False)
    spec = importlib.util.spec_from_file_location(f"nanogpt_{name}_{smoke}", CODE_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(script: str, code_dir: Path, data_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """`bash <script>` in code_dir with what the worker gives a smoke job: allow-listed vars + env_vars."""
    spec = load_env(str(ENV_DIR), smoke=True)
    env = {**jobenv.job_environ(), **spec.env_vars, "TOOLKIT_SMOKE": "1", "TOOLKIT_DATA_DIR": str(data_dir),
           "TOOLKIT_HIDDEN_DIR": str(data_dir) + ".hidden", **extra}
    proc = subprocess.run(["nice", "bash", "-c", script], cwd=code_dir, env=env, capture_output=True, text=True,
                          timeout=300)
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{output}"
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the shard format -------------------------------------------------------------------------------------
def test_shard_reader_round_trips_the_synthetic_writer(tmp_path, monkeypatch):
    synthetic, train, evaluate = (load_module(n, monkeypatch) for n in ("synthetic_data", "train", "eval"))
    tokens = np.random.default_rng(0).integers(0, 2**16, size=5000)
    tokens[:2] = [0, 2**16 - 1]  # the extremes of uint16
    path = tmp_path / "fineweb_train_000001.bin"
    synthetic.write_shard(str(path), tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert list(header[:3]) == [20240520, 1, 5000] and not header[3:].any()
    assert path.stat().st_size == 256 * 4 + 2 * 5000
    assert np.array_equal(train.load_tokens(str(path)), tokens)
    assert np.array_equal(evaluate.load_tokens(str(path)), tokens)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file was renamed


def test_shard_readers_reject_a_truncated_or_foreign_file(tmp_path, monkeypatch):
    synthetic, train, evaluate = (load_module(n, monkeypatch) for n in ("synthetic_data", "train", "eval"))
    path = tmp_path / "shard.bin"
    synthetic.write_shard(str(path), np.arange(100))
    path.write_bytes(path.read_bytes()[:-2])  # one token short of what the header says
    with pytest.raises(ValueError, match="header says 100"):
        evaluate.load_tokens(str(path))
    with pytest.raises(AssertionError, match="header says 100"):
        train.load_tokens(str(path))
    path.write_bytes(np.zeros(300, dtype=np.int32).tobytes())
    with pytest.raises(ValueError, match="not an llm.c token shard"):
        evaluate.load_tokens(str(path))


def test_synthetic_shards_are_deterministic_idempotent_and_in_vocab(tmp_path, monkeypatch):
    synthetic = load_module("synthetic_data", monkeypatch)
    first = synthetic.ensure_shards(str(tmp_path / "a"), vocab_size=1024, shard_tokens=3000, val_tokens=2000)
    synthetic.ensure_shards(str(tmp_path / "b"), vocab_size=1024, shard_tokens=3000, val_tokens=2000)
    assert [Path(p).name for p in first] == ["fineweb_val_000000.bin", "fineweb_train_000001.bin",
                                             "fineweb_train_000002.bin"]
    for name in map(lambda p: Path(p).name, first):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert synthetic.ensure_shards(str(tmp_path / "a"), vocab_size=1024, shard_tokens=3000) == []
    val = synthetic.markov_tokens(2000, 1024, 1234, 0)
    train1 = synthetic.markov_tokens(3000, 1024, 1234, 1)
    assert val.max() < 1024 and len(np.unique(train1)) <= synthetic.ALPHABET
    assert not np.array_equal(val[:100], train1[:100])  # val is not a copy of train


# ---- the full-size configuration (read, not run) -------------------------------------------------------------
def test_full_config_is_gpt2_124m_with_the_paper_batch_and_schedule(monkeypatch):
    train = load_module("train", monkeypatch)
    config = train.GPTConfig(block_size=train.block_size, vocab_size=train.vocab_size, n_layer=train.n_layer,
                             n_head=train.n_head, n_embd=train.n_embd)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = train.GPT(config)
    d, V, L, T = config.n_embd, config.vocab_size, config.n_layer, config.block_size
    assert (L, config.n_head, d, V, T) == (12, 12, 768, 50257, 1024)
    expected = V * d + T * d + L * 12 * d * d  # tied embedding; attn + 4x MLP; the norms have no parameters
    assert sum(p.numel() for p in model.parameters()) == expected == 124_318_464
    assert model.lm_head.weight is model.transformer.wte.weight
    assert train.batch_size * train.block_size * 8 == train.total_batch_size == 262_144
    assert (train.train_budget_s, train.compile_model, train.smoke) == (1500.0, True, False)


def test_lr_schedule_warms_up_then_decays_to_a_tenth_over_eleven(monkeypatch):
    train = load_module("train", monkeypatch)
    peak = train.learning_rate
    assert (peak, train.betas, train.weight_decay, train.grad_clip) == (0.0015, (0.9, 0.95), 0.1, 1.0)
    assert train.get_lr(0) == pytest.approx(peak / 256)
    assert train.get_lr(255) == pytest.approx(peak)
    middle = (train.warmup_iters + train.num_iterations) // 2
    assert peak * 0.1 / 1.1 < train.get_lr(middle) < peak
    assert train.get_lr(train.num_iterations) == pytest.approx(peak * 0.1 / 1.1)
    assert train.get_lr(train.num_iterations + 1000) == pytest.approx(peak * 0.1 / 1.1)


# ---- the paper release's recipe (PAPER.md, Environment 1) -----------------------------------------------------
def plain_values(path: Path) -> dict:
    """The module-level `name = literal` assignments of a file, as written (smoke overrides sit inside an `if`)."""
    values = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):  # computed, e.g. read from the environment
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_train_py_plain_values_are_the_release_recipe():
    hp = plain_values(CODE_DIR / "train.py")
    assert (hp["n_layer"], hp["n_head"], hp["n_embd"], hp["vocab_size"], hp["block_size"]) == (12, 12, 768, 50257, 1024)
    assert (hp["learning_rate"], hp["betas"], hp["weight_decay"], hp["grad_clip"]) == (0.0015, (0.9, 0.95), 0.1, 1.0)
    assert hp["batch_size"] * hp["block_size"] * 8 == hp["total_batch_size"] == 262_144
    # the release's schedule length, not a recalibrated one: the 1500 s budget stops training first
    assert (hp["warmup_iters"], hp["num_iterations"], hp["train_budget_s"]) == (256, 26_880, 1500.0)
    assert hp["compile_model"] is True


def test_the_schedule_decays_linearly_to_a_tenth_over_eleven_at_step_26880(monkeypatch):
    train = load_module("train", monkeypatch)
    peak = train.learning_rate
    assert train.get_lr(26_880) == pytest.approx(peak * 0.1 / 1.1)
    halfway = 256 + (26_880 - 256) // 2
    assert train.get_lr(halfway) == pytest.approx(peak * (0.1 + 0.5) / 1.1)


def tiny_config(train: ModuleType, n_layer: int):
    return train.GPTConfig(block_size=16, vocab_size=256, n_layer=n_layer, n_head=12, n_embd=96)


def test_the_norm_has_no_parameters(monkeypatch):
    train = load_module("train", monkeypatch)
    model = train.GPT(tiny_config(train, n_layer=2))
    per_layer = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    expected |= {f"transformer.h.{i}.{name}" for i in range(2) for name in per_layer}
    assert set(model.state_dict()) == expected  # no norm weight anywhere
    x = torch.randn(3, 5, 96) * 7
    assert torch.allclose(train.rmsnorm(x).pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)  # unit RMS, no gain


def test_the_attention_output_is_scaled_by_one_over_sqrt_24(monkeypatch):
    train = load_module("train", monkeypatch)
    torch.manual_seed(0)
    attn = train.GPT(tiny_config(train, n_layer=12)).transformer.h[0].attn
    projected = []
    attn.c_proj.register_forward_hook(lambda module, args, out: projected.append(out))
    y = attn(torch.randn(2, 8, 96))
    assert torch.allclose(y, projected[0] / math.sqrt(24))
    # the scale replaces GPT-2's smaller c_proj init: c_proj starts like c_attn (same fan-in, PyTorch's default)
    assert attn.c_proj.weight.std().item() == pytest.approx(attn.c_attn.weight.std().item(), rel=0.1)


def test_env_yaml_locks_the_data_pipeline_and_hides_the_eval():
    spec, smoke = load_env(str(ENV_DIR)), load_env(str(ENV_DIR), smoke=True)
    assert set(spec.locked) == {"eval.py", "run.sh", "eval.sh", "synthetic_data.py"}
    assert spec.hidden == ("eval.py",) and "train.py" not in spec.locked
    assert (spec.metric, spec.direction, spec.reward, spec.metric_range) == ("val_loss", "minimize",
                                                                           "1/val_loss", (2.5, 12.0))
    assert spec.resources.gpus == 8 and spec.resources.time_min > 25
    assert smoke.resources.gpus == 0 and smoke.env_vars["NPROC"] == "1"


# ---- smoke run + eval (real processes) ----------------------------------------------------------------------
def score(code_dir: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """eval.sh as the worker runs it: from the pristine env dir, the candidate's directory named."""
    return run_script("bash eval.sh", CODE_DIR, data_dir, TOOLKIT_CODE_DIR=str(code_dir),
                      TOOLKIT_SCRATCH=str(code_dir.parent), PYTHONSAFEPATH="1", PYTHONDONTWRITEBYTECODE="1",
                      PYTHONPATH=str(CODE_DIR))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke `prepare`, then run.sh in a copy of the codebase (no hidden eval in it), then the eval."""
    root = tmp_path_factory.mktemp("nanogpt")
    code_dir, data_dir = root / "code", root / "data"
    shutil.copytree(CODE_DIR, code_dir, ignore=shutil.ignore_patterns("__pycache__", "ckpt.pt*", "eval.py"))
    run_script(load_env(str(ENV_DIR), smoke=True).prepare, CODE_DIR, data_dir)
    run = run_script("bash run.sh", code_dir, data_dir)
    evaluation = score(code_dir, data_dir)
    return code_dir, data_dir, run, evaluation


@pytest.mark.slow
def test_smoke_run_then_eval_prints_a_learned_val_loss(smoke_run):
    code_dir, data_dir, run, evaluation = smoke_run
    assert sorted(p.name for p in (data_dir / "smoke").iterdir()) == [
        "fineweb_train_000001.bin", "fineweb_train_000002.bin"]   # the val shard lives apart, hidden
    assert [p.name for p in Path(f"{data_dir}.hidden/smoke").iterdir()] == ["fineweb_val_000000.bin"]
    metrics = last_json(evaluation)
    low, high = load_env(str(ENV_DIR), smoke=True).metric_range
    assert metrics["val_tokens"] == 4096 and metrics["audited"] == 64
    assert low < metrics["val_loss"] < math.log(1024) - 0.5 < high  # it learned, and the range admits it
    ckpt = torch.load(code_dir / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["n_layer"] == 2 and ckpt["tokens"] > 0 and 0 < ckpt["train_s"] < 60
    assert "trained" in run.stdout and not (code_dir / "ckpt.pt.tmp").exists()


@pytest.mark.slow
def test_eval_reports_a_planted_attention_leak_as_invalid(smoke_run, tmp_path):
    code_dir, data_dir, _, _ = smoke_run
    leaky = tmp_path / "code"
    shutil.copytree(code_dir, leaky, ignore=shutil.ignore_patterns("__pycache__"))
    source = (leaky / "train.py").read_text()
    assert source.count("is_causal=True") == 1
    (leaky / "train.py").write_text(source.replace("is_causal=True", "is_causal=False"))
    metrics = last_json(score(leaky, data_dir))  # same weights, non-causal attention
    assert list(metrics) == ["invalid"] and "the model sees its future" in metrics["invalid"]


# ---- TOOLKIT_SEED: the toolkit's noise-floor and certification re-runs seed train.py, never the eval ---------
@pytest.mark.parametrize("value, seed, data_seed", [(None, 1337, None), ("7", 7, 7), ("0", 0, 0)])
def test_toolkit_seed_replaces_the_seed_and_seeds_the_data_order(monkeypatch, value, seed, data_seed):
    if value is None:
        monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    else:
        monkeypatch.setenv("TOOLKIT_SEED", value)
    train = load_module("train", monkeypatch, smoke=True)
    assert (train.seed, train.data_seed) == (seed, data_seed)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "4294967296"])
def test_a_malformed_toolkit_seed_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("TOOLKIT_SEED", value)
    with pytest.raises(ValueError, match="TOOLKIT_SEED must be a decimal integer"):
        load_module("train", monkeypatch, smoke=True)


def test_the_data_order_follows_the_seed_and_is_the_same_on_every_rank(tmp_path, monkeypatch):
    monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    synthetic, train = (load_module(n, monkeypatch) for n in ("synthetic_data", "train"))
    shard_tokens, n_shards, B, T, world = 1000, 5, 2, 8, 2
    for i in range(n_shards):  # every token is its own position in the name-ordered stream
        synthetic.write_shard(str(tmp_path / f"fineweb_train_{i + 1:06d}.bin"),
                              np.arange(i * shard_tokens, (i + 1) * shard_tokens))
    pattern = str(tmp_path / "fineweb_train_*.bin")

    def stream(seed, n_steps=200):  # 200 steps of 32 tokens: every shard, and a wrap-around
        loaders = [train.DataLoader(pattern, B, T, rank, world, seed) for rank in range(world)]
        steps = []
        for _ in range(n_steps):
            batches = [loader.next_batch() for loader in loaders]
            for (x, y), loader in zip(batches, loaders):
                assert torch.equal(y.flatten()[:-1], x.flatten()[1:])  # targets: the inputs shifted by one
                assert loader.files == loaders[0].files and loader.shard == loaders[0].shard
            # rank r reads the r-th slice of the same chunk: together, one contiguous run of the stream
            chunk = torch.cat([x.flatten() for x, _ in batches])
            assert torch.equal(chunk, torch.arange(int(chunk[0]), int(chunk[0]) + B * T * world))
            steps.append(chunk)
        return torch.stack(steps)

    # the baseline's order: shard by shard in name order, each from its first token, 31 chunks of 32 per shard
    unseeded = stream(None)
    per_shard, chunk = (shard_tokens - 1) // (B * T * world), B * T * world
    expected = [(k // per_shard % n_shards) * shard_tokens + (k % per_shard) * chunk for k in range(len(unseeded))]
    assert unseeded[:, 0].tolist() == expected
    assert torch.equal(stream(1), stream(1))
    assert not torch.equal(stream(1), stream(2)) and not torch.equal(stream(1), unseeded)
    assert not torch.equal(stream(1)[:, 0] // shard_tokens, unseeded[:, 0] // shard_tokens)  # another shard order


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke `prepare` alone (the synthetic shards), for preflight runs."""
    data_dir = tmp_path_factory.mktemp("nanogpt_seed") / "data"
    run_script(load_env(str(ENV_DIR), smoke=True).prepare, CODE_DIR, data_dir)
    return data_dir


def test_toolkit_seed_makes_quick_checks_repeatable_and_distinct(smoke_data, tmp_path):
    def trained_weights(seed: str, name: str) -> dict:
        code_dir = tmp_path / name
        shutil.copytree(CODE_DIR, code_dir, ignore=shutil.ignore_patterns("__pycache__", "ckpt.pt*", "eval.py"))
        spec = load_env(str(ENV_DIR), smoke=True)  # the implementer's preflight: the smoke run cut to two steps
        run_script(spec.quick_check, code_dir, smoke_data, TOOLKIT_QUICK_CHECK="1", TOOLKIT_SEED=seed)
        return torch.load(code_dir / "ckpt.pt", weights_only=True)["model"]

    first, again, other = trained_weights("1", "a"), trained_weights("1", "b"), trained_weights("2", "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in first if k.endswith("weight") and first[k].dim() == 2)


@pytest.mark.parametrize("value, data_seed", [(None, None), ("5", 5)])
def test_training_hands_the_data_seed_to_its_loader(smoke_data, tmp_path, monkeypatch, value, data_seed):
    if value is None:
        monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    else:
        monkeypatch.setenv("TOOLKIT_SEED", value)
    monkeypatch.setenv("TOOLKIT_QUICK_CHECK", "1")  # the preflight in-process: two steps of the smoke run
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(smoke_data))
    monkeypatch.delenv("RANK", raising=False)
    train = load_module("train", monkeypatch, smoke=True)
    seeds = []

    class RecordingLoader(train.DataLoader):
        def __init__(self, pattern, B, T, rank, world_size, seed=None):
            super().__init__(pattern, B, T, rank, world_size, seed)
            seeds.append(seed)

    monkeypatch.setattr(train, "DataLoader", RecordingLoader)
    monkeypatch.chdir(tmp_path)  # it saves ckpt.pt in the working directory
    train.train()
    assert seeds == [data_seed] and (tmp_path / "ckpt.pt").exists()


def test_the_locked_files_never_read_toolkit_seed():
    spec = load_env(str(ENV_DIR))
    assert {"eval.py", "eval.sh"} <= set(spec.locked)
    for name in spec.locked:
        assert "TOOLKIT_SEED" not in (CODE_DIR / name).read_text(), name
