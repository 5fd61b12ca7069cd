"""Tests for envs/tiny_lm: the locked data split, the evaluation's guards, train -> eval end to end."""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ENV_DIR = Path(__file__).resolve().parents[2] / "envs" / "tiny_lm"
CODE_DIR = ENV_DIR / "code"
MODULES = ("data", "train", "eval")
CAUSAL = "is_causal=True)"
LEAKS = {
    "fully non-causal": "is_causal=False)",
    "sees the next token": "attn_mask=torch.ones(T, T, dtype=torch.bool).tril(diagonal=1))",
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The public (train) dir, prepared once as the toolkit does: `python data.py` fetches the text."""
    public = tmp_path_factory.mktemp("tiny_lm_data")
    env = {**os.environ, "TOOLKIT_DATA_DIR": str(public)}
    subprocess.run([sys.executable, "data.py"], cwd=CODE_DIR, env=env, check=True, capture_output=True)
    return public


@pytest.fixture(scope="session")
def hidden_dir(data_dir) -> Path:
    return data_dir.with_name(data_dir.name + ".hidden")


@pytest.fixture
def code_copy(tmp_path) -> Path:
    """A candidate's directory as the worker leaves it: no hidden file (eval.py) in it."""
    dst = tmp_path / "code"
    shutil.copytree(CODE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__", "ckpt.pt", "eval.py"))
    (tmp_path / "scratch").mkdir()
    return dst


@pytest.fixture
def load(monkeypatch, data_dir, hidden_dir):
    """Import data/train from a codebase dir in-process, and forget them afterwards."""
    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TOOLKIT_HIDDEN_DIR", str(hidden_dir))

    def _load(code_dir: Path, name: str):
        monkeypatch.syspath_prepend(str(code_dir))
        for module in MODULES:
            sys.modules.pop(module, None)
        return importlib.import_module(name)

    yield _load
    for module in MODULES:
        sys.modules.pop(module, None)


def plant_leak(code_dir: Path, replacement: str) -> None:
    train_py = code_dir / "train.py"
    source = train_py.read_text()
    assert source.count(CAUSAL) == 1, "the baseline attention call changed: update the planted leak"
    train_py.write_text(source.replace(CAUSAL, replacement))


def run(code_dir: Path, data_dir: Path, cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TOOLKIT_DATA_DIR": str(data_dir), **env}
    return subprocess.run(cmd, cwd=code_dir, env=full_env, capture_output=True, text=True, timeout=300)


def score(code_dir: Path, data_dir: Path, hidden_dir: Path) -> subprocess.CompletedProcess:
    """The eval as the worker runs it: from the pristine env dir, the candidate's dir named, never on sys.path."""
    env = {**os.environ, "TOOLKIT_DATA_DIR": str(data_dir), "TOOLKIT_HIDDEN_DIR": str(hidden_dir),
           "TOOLKIT_CODE_DIR": str(code_dir), "TOOLKIT_SCRATCH": str(code_dir.parent / "scratch"),
           "PYTHONPATH": str(CODE_DIR), "PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "eval.py"], cwd=CODE_DIR, env=env, capture_output=True, text=True,
                          timeout=300)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# -----------------------------------------------------------------------------
# data.py


def test_split_is_deterministic_and_disjoint(load, tmp_path, monkeypatch):
    data = load(CODE_DIR, "data")
    train, val = data.get_split("train"), data.get_split("val")
    text = data.load_text()   # fetched again: the same text, hence the same splits
    assert len(train) + len(val) == len(text)
    assert 0.05 <= len(val) / len(text) <= 0.10 + 1e-6
    # train is the head of the fixed stream and val its tail: no character is in both
    assert data.decode(train[-200:]) == text[len(train) - 200 : len(train)]
    assert data.decode(val[:200]) == text[len(train) : len(train) + 200]
    # and no play is duplicated across the cut
    assert data.decode(val[1000:1200]) not in text[: len(train)]


def test_vocab_is_fixed_and_round_trips(load):
    data = load(CODE_DIR, "data")
    assert data.VOCAB_SIZE == 79 and data.CONTEXT_LEN == 128
    ids = data.get_split("val")[:500]
    assert int(ids.min()) >= 0 and int(ids.max()) < data.VOCAB_SIZE
    assert data.encode(data.decode(ids)) == ids.tolist()
    with pytest.raises(ValueError):
        data.get_split("test")


def test_splits_live_apart_and_no_raw_text_is_kept(data_dir, hidden_dir):
    """Training's dir holds only the train split; the validation split and nothing else is in the hidden dir."""
    assert [p.name for p in data_dir.iterdir()] == ["tiny_lm_v1_5d36fc790cbf_train.u8"]
    assert [p.name for p in hidden_dir.iterdir()] == ["tiny_lm_v1_5d36fc790cbf_val.u8"]


# -----------------------------------------------------------------------------
# eval.py: the trusted scorer, run as the worker runs it


@pytest.mark.parametrize("field,value", [("block_size", 64), ("vocab_size", 80)])
def test_eval_rejects_checkpoint_with_other_context_or_vocab(load, code_copy, data_dir, hidden_dir, field, value):
    train = load(code_copy, "train")
    config = train.GPTConfig(**{field: value})
    train.save_checkpoint(train.GPT(config), config, str(code_copy / "ckpt.pt"))
    proc = score(code_copy, data_dir, hidden_dir)
    assert f"{field}={value}" in last_json(proc.stdout)["invalid"], proc.stderr


def test_eval_rejects_wrong_logits_shape(load, code_copy, data_dir, hidden_dir):
    train = load(code_copy, "train")
    model = train.GPT(train.GPTConfig())
    train.save_checkpoint(model, model.config, str(code_copy / "ckpt.pt"))
    # a nanoGPT-style inference shortcut that returns only the last position's logits
    source = (code_copy / "train.py").read_text()
    (code_copy / "train.py").write_text(
        source + "\nGPT.forward = lambda self, idx, targets=None: torch.zeros(idx.size(0), 1, 79)\n")
    proc = score(code_copy, data_dir, hidden_dir)
    assert "logits of shape" in last_json(proc.stdout)["invalid"], proc.stderr


def test_eval_fails_loudly_without_checkpoint(code_copy, data_dir, hidden_dir):
    proc = score(code_copy, data_dir, hidden_dir)
    assert proc.returncode != 0 and "ckpt.pt not found" in proc.stderr


# -----------------------------------------------------------------------------
# the commands env.yaml runs, as subprocesses


def test_quick_check_runs_two_steps_and_writes_no_checkpoint(code_copy, data_dir):
    proc = run(code_copy, data_dir, [sys.executable, "train.py"], TOOLKIT_QUICK_CHECK="1")
    assert proc.returncode == 0, proc.stderr
    assert "done: 2 steps" in proc.stdout and "quick check ok" in proc.stdout
    assert not (code_copy / "ckpt.pt").exists()


def test_quick_check_catches_a_crashing_patch(code_copy, data_dir):
    train_py = code_copy / "train.py"
    train_py.write_text(train_py.read_text().replace("return self.c_proj(y)", "return self.c_proj(y.T)"))
    proc = run(code_copy, data_dir, [sys.executable, "train.py"], TOOLKIT_QUICK_CHECK="1")
    assert proc.returncode != 0


@pytest.mark.slow
def test_train_then_eval_gives_a_plausible_val_loss(code_copy, data_dir, hidden_dir):
    trained = run(code_copy, data_dir, [sys.executable, "train.py"], TRAIN_BUDGET_S="3")
    assert trained.returncode == 0, trained.stderr
    assert (code_copy / "ckpt.pt").exists()
    evaluated = score(code_copy, data_dir, hidden_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    result = last_json(evaluated.stdout)
    assert result["val_tokens"] == 512 * 128 and result["audited"] == 512
    assert 1.0 <= result["val_loss"] <= 4.4  # better than uniform (ln 79 = 4.37) after a few steps


@pytest.mark.slow
@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_planted_leak_end_to_end_is_invalid(code_copy, data_dir, hidden_dir, leak):
    plant_leak(code_copy, LEAKS[leak])
    trained = run(code_copy, data_dir, [sys.executable, "train.py"], TRAIN_BUDGET_S="0")
    assert trained.returncode == 0, trained.stderr
    evaluated = score(code_copy, data_dir, hidden_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "changed when only the characters after position" in last_json(evaluated.stdout)["invalid"]


# -----------------------------------------------------------------------------
# TOOLKIT_SEED: the toolkit's noise-floor and certification re-runs seed train.py, never the evaluation


def quick_check_losses(code_dir: Path, data_dir: Path, **env: str) -> list[str]:
    """The losses the preflight prints (step 0 and the last step): they follow the init and the batches."""
    proc = run(code_dir, data_dir, [sys.executable, "train.py"], TOOLKIT_QUICK_CHECK="1", **env)
    assert proc.returncode == 0, proc.stderr
    losses = re.findall(r"loss (\d+\.\d+)", proc.stdout)
    assert len(losses) == 2, proc.stdout
    return losses


def test_toolkit_seed_makes_runs_repeatable_and_distinct(code_copy, data_dir, monkeypatch):
    monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    first, again, other = (quick_check_losses(code_copy, data_dir, TOOLKIT_SEED=s) for s in ("1", "1", "2"))
    assert first == again
    assert first != other


def test_without_toolkit_seed_the_run_is_the_seed_1337_run(code_copy, data_dir, monkeypatch):
    monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    unset = quick_check_losses(code_copy, data_dir)
    assert unset == quick_check_losses(code_copy, data_dir, TOOLKIT_SEED="1337")
    assert unset != quick_check_losses(code_copy, data_dir, TOOLKIT_SEED="1")


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "4294967296"])
def test_a_malformed_toolkit_seed_is_refused_by_name(load, code_copy, monkeypatch, value):
    monkeypatch.setenv("TOOLKIT_SEED", value)
    with pytest.raises(ValueError, match="TOOLKIT_SEED must be a decimal integer"):
        load(code_copy, "train")


def test_the_locked_files_never_read_toolkit_seed():
    from toolkit.envs import load_env

    locked = load_env(str(ENV_DIR)).locked
    assert "eval.py" in locked
    for name in locked:
        assert "TOOLKIT_SEED" not in (CODE_DIR / name).read_text(), name


@pytest.mark.slow
def test_the_eval_score_does_not_depend_on_toolkit_seed(load, code_copy, data_dir, hidden_dir, monkeypatch):
    monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    train = load(code_copy, "train")
    model = train.GPT(train.GPTConfig())
    train.save_checkpoint(model, model.config, str(code_copy / "ckpt.pt"))
    scores = []
    for value in ("1", "2"):
        monkeypatch.setenv("TOOLKIT_SEED", value)  # score() passes the test's environment on to eval.py
        proc = score(code_copy, data_dir, hidden_dir)
        assert proc.returncode == 0, proc.stderr
        scores.append(last_json(proc.stdout))
    assert "val_loss" in scores[0] and scores[0] == scores[1]
