"""The grpo_math environment: grading, GRPO pieces, checkpoint rules, and a smoke run + eval that a
forging run cannot move."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("math_verify")

from toolkit.envs import load_env  # noqa: E402

ENV_DIR = Path(__file__).resolve().parents[2] / "envs" / "grpo_math"
CODE = ENV_DIR / "code"
STEP_TIMEOUT_S = 240


def load_by_path(name: str, path: Path, code_on_path: bool = False):
    """Import an env file under a private name; `data` (a common module name) never leaks into sys.modules."""
    saved, saved_flag = sys.modules.pop("data", None), sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ inside the shipped env
    if code_on_path:
        sys.path.insert(0, str(CODE))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.dont_write_bytecode = saved_flag
        if code_on_path:
            sys.path.remove(str(CODE))
        sys.modules.pop("data", None)
        if saved is not None:
            sys.modules["data"] = saved


@pytest.fixture(scope="module")
def grader():
    return load_by_path("grpo_test_grader", CODE / "grader.py")


@pytest.fixture(scope="module")
def validate():
    return load_by_path("grpo_test_validate", CODE / "validate.py")


@pytest.fixture(scope="module")
def train():
    os.environ["TOOLKIT_SMOKE"] = "1"  # read at import: the smoke hyper-parameters
    try:
        return load_by_path("grpo_test_train", CODE / "train.py", code_on_path=True)
    finally:
        del os.environ["TOOLKIT_SMOKE"]


# ---- grading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, gold", [
    ("0.5", "\\frac{1}{2}"), ("\\frac12", "\\frac{1}{2}"), ("(x+1)^2", "x^2+2x+1"), ("\\sqrt{50}", "5\\sqrt{2}"),
    ("\\boxed{14/3}", "\\frac{14}{3}"), ("C", "\\text{(C)}"), ("$p-q$", "p - q"), ("-61", "-61"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
])
def test_grader_accepts_equivalent_answers(grader, answer, gold):
    response = f" 2+2 is four, so... </think> <answer> {answer} </answer>"
    assert grader.grade(response, grader.parse_gold(gold))


@pytest.mark.parametrize("response, gold", [
    ("ok </think> <answer>4</answer>", "3"),  # wrong value
    ("ok </think> <answer>61</answer>", "-61"),  # sign
    ("ok </think> <answer>(x-1)^2</answer>", "x^2+2x+1"),
    ("ok <answer>3</answer>", "3"),  # thinking never closed
    ("<answer>3</answer> </think> no answer", "3"),  # the answer came before </think>
    ("ok </think> the answer is 3", "3"),  # no answer tags
    ("ok </think> <answer></answer>", "3"),  # empty
    ("ok </think> <answer>3</answer> <answer>4</answer>", "3"),  # the last answer counts
    ("ok </think> <answer>" + "1" * 2000 + "</answer>", "3"),  # absurdly long
])
def test_grader_rejects_wrong_or_malformed_answers(grader, response, gold):
    assert not grader.grade(response, grader.parse_gold(gold))


# ---- GRPO pieces of train.py --------------------------------------------------------------------


def test_advantages_are_normalised_within_each_group(train):
    assert train.group_size == 4
    adv = train.group_normalized_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]))
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-4)
    assert torch.all(adv[4:] == 0)  # a group that all got the same reward teaches nothing


def test_grpo_clip_stops_the_gradient_beyond_the_clip_range(train):
    mask = torch.ones(1, 2)
    log_probs = torch.log(torch.tensor([[1.1, 1.5]])).requires_grad_()
    loss, clip_frac = train.policy_loss(log_probs, torch.zeros(1, 2), torch.tensor([1.0]), mask)
    loss.backward()
    assert loss.item() == pytest.approx(-(1.1 + 1.2) / 2)  # the 1.5 ratio counts as 1.2
    assert torch.allclose(log_probs.grad, torch.tensor([[-1.1 / 2, 0.0]]))
    assert clip_frac == pytest.approx(0.5)


def test_collate_masks_only_the_response_tokens(train):
    input_ids, labels, mask = train.collate([([5, 6, 7, 8, 9], 3), ([5, 6, 7], 2)], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7, 8], [5, 6, 0, 0]]
    assert labels.tolist() == [[6, 7, 8, 9], [6, 7, 0, 0]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]  # labels 8, 9 and 7 are response tokens


def test_prepare_extracts_the_last_boxed_answer():
    prepare = load_by_path("grpo_test_prepare", ENV_DIR / "prepare.py")
    assert prepare.last_boxed("so \\boxed{1} and \\boxed{\\frac{a}{b}}.") == "\\frac{a}{b}"
    assert prepare.last_boxed("is $\\boxed 5$.") == "5"
    assert prepare.last_boxed("no box") is None


# ---- the paper's baseline, validation points and evaluation decoding (PAPER.md, Environment 2) -----------


def load_train_mode(monkeypatch, smoke: bool, quick_check: bool = False):
    """train.py as the real run (smoke=False), the smoke run or the preflight imports it."""
    for name, on in (("TOOLKIT_SMOKE", smoke), ("TOOLKIT_QUICK_CHECK", quick_check)):
        if on:
            monkeypatch.setenv(name, "1")
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    return load_by_path(f"grpo_test_train_{smoke}_{quick_check}", CODE / "train.py", code_on_path=True)


def test_the_baseline_hyper_parameters_are_the_papers(monkeypatch):
    t = load_train_mode(monkeypatch, smoke=False)
    assert (t.learning_rate, t.betas, t.weight_decay) == (1e-5, (0.9, 0.95), 0.0)
    assert (t.n_grpo_steps, t.group_size, t.n_prompts_per_step, t.eval_every) == (20, 8, 128, 2)
    assert (t.gradient_accumulation_steps, t.micro_batch_size) == (16, 4)
    assert (t.loss_type, t.cliprange, t.use_std_normalization) == ("grpo_clip", 0.2, True)
    assert (t.sampling_temperature, t.sampling_max_tokens) == (1.0, 1024)


def test_validation_points_start_at_step_0_and_stop_before_the_last_step(monkeypatch):
    assert load_train_mode(monkeypatch, smoke=False).eval_steps == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert load_train_mode(monkeypatch, smoke=True).eval_steps == [0, 2]          # 4 smoke steps
    assert load_train_mode(monkeypatch, smoke=True, quick_check=True).eval_steps == [0]  # the 1-step preflight


def test_the_vllm_eval_samples_one_answer_per_problem_with_the_rollout_settings(validate, monkeypatch):
    assert (validate.EVAL_TEMPERATURE, validate.EVAL_TOP_P, validate.EVAL_MAX_TOKENS, validate.EVAL_STOP) == (
        1.0, 1.0, 1024, "</answer>")
    assert len(range(0, 20, 2)) == validate.MAX_CHECKPOINTS
    seen = {}
    fake = types.ModuleType("vllm")  # records what the eval asks vLLM for (no vLLM on a CPU)
    fake.SamplingParams = lambda **kwargs: seen.setdefault("sampling", kwargs)
    fake.LLM = lambda **kwargs: seen.setdefault("engine", kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the generator sets it; restored afterwards
    validate.VLLMGenerator(validate.EVAL_MAX_TOKENS)
    assert seen["sampling"] == {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 1024, "stop": ["</answer>"],
                                "include_stop_str_in_output": True}
    assert seen["engine"]["seed"] == validate.EVAL_SEED


def test_the_hf_eval_samples_with_the_same_settings_and_a_fixed_seed(validate, monkeypatch):
    monkeypatch.setenv("TOOLKIT_SMOKE", "1")
    tokenizer, config = validate.base_tokenizer_and_config()
    generator = validate.HFGenerator(tokenizer, config, max_tokens=12)
    calls, generate = [], generator.model.generate
    monkeypatch.setattr(generator.model, "generate", lambda **kwargs: calls.append(kwargs) or generate(**kwargs))
    prompts = ["Calculate 1 + 2.", "Calculate 3 * 4.", "Calculate 5 - 6."]
    first, again = generator.generate(prompts), generator.generate(prompts)
    assert len(first) == len(prompts) and first == again  # one answer per problem; re-scoring repeats the draws
    keys = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "stop_strings")
    settings = {k: calls[0][k] for k in keys}
    assert settings == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 12,
                        "stop_strings": ["</answer>"]}
    monkeypatch.setattr(validate, "EVAL_SEED", 1)
    assert generator.generate(prompts) != first  # sampled, not greedy: another seed draws other answers


# ---- the eval's rules for checkpoints --------------------------------------------------------------


@pytest.fixture
def smoke_shapes(validate, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_SMOKE", "1")
    monkeypatch.setenv("TOOLKIT_SCRATCH", str(tmp_path))
    _, config = validate.base_tokenizer_and_config()
    return validate.expected_shapes(config)


def save_state(root: Path, step: int, state: dict) -> Path:
    from safetensors.torch import save_file
    path = root / "checkpoints" / f"step_{step:04d}"
    path.mkdir(parents=True)
    save_file(state, str(path / "model.safetensors"))
    return path


def test_eval_accepts_exactly_the_base_parameters(validate, smoke_shapes, tmp_path):
    good = save_state(tmp_path, 2, {k: torch.zeros(s) for k, s in smoke_shapes.items()})
    assert validate.checkpoint_files(good, smoke_shapes, tied=True) == [good / "model.safetensors"]
    assert validate.find_checkpoints() == [(2, good)]


@pytest.mark.parametrize("change", ["extra", "missing", "shape", "int", "pickle"])
def test_eval_rejects_checkpoints_that_are_not_the_base_model(validate, smoke_shapes, tmp_path, change):
    state = {k: torch.zeros(s) for k, s in smoke_shapes.items()}
    name = "model.embed_tokens.weight"
    if change == "extra":
        state["adapter.weight"] = torch.zeros(2)
    elif change == "missing":
        del state[name]
    elif change == "shape":
        state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    elif change == "int":
        state[name] = state[name].long()
    path = save_state(tmp_path, 2, state)
    if change == "pickle":  # torch.load would run the run's code: only safetensors are read
        (path / "model.safetensors").unlink()
        torch.save(state, path / "pytorch_model.bin")
    with pytest.raises(validate.Invalid):
        validate.checkpoint_files(path, smoke_shapes, tied=True)


def test_eval_refuses_more_checkpoints_than_validation_points(validate, smoke_shapes, tmp_path):
    for step in range(1, validate.MAX_CHECKPOINTS + 2):
        (tmp_path / "checkpoints" / f"step_{step:04d}").mkdir(parents=True)
    with pytest.raises(validate.Invalid, match="at most"):
        validate.find_checkpoints()


def test_eval_refuses_checkpoints_linked_from_elsewhere(validate, smoke_shapes, tmp_path):
    other = tmp_path / "other_candidate"
    save_state(other, 2, {k: torch.zeros(s) for k, s in smoke_shapes.items()})
    (tmp_path / "checkpoints").symlink_to(other / "checkpoints")
    with pytest.raises(validate.Invalid, match="symlink"):
        validate.find_checkpoints()


# ---- smoke run + eval, as the worker runs them ----------------------------------------------------


def env_yaml_specs():
    return load_env(str(ENV_DIR)), load_env(str(ENV_DIR), smoke=True)


def test_env_yaml_follows_the_contract():
    real, smoke = env_yaml_specs()
    assert (real.metric, real.direction, real.reward, real.metric_range) == ("val_accuracy", "maximize",
                                                                             "val_accuracy", (0.0, 1.0))
    assert real.resources.gpus == 1 and real.resources.time_min * 60 > float(real.env_vars["TRAIN_BUDGET_S"])
    assert smoke.resources.gpus == 0 and smoke.resources.time_min <= 5
    assert set(real.hidden) == {"validate.py", "grader.py"} and "data.py" in real.locked


def run_step(command: str, code: Path, root: Path, **extra: str) -> subprocess.CompletedProcess:
    _, smoke = env_yaml_specs()
    env = {**os.environ, **smoke.env_vars, "TOOLKIT_SMOKE": "1", "TOOLKIT_DATA_DIR": str(root / "data"),
           "TOOLKIT_HIDDEN_DIR": str(root / "data.hidden"), "TOOLKIT_SCRATCH": str(root / "scratch"),
           "GRPO_KEEP_CHECKPOINTS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           **extra}
    return subprocess.run(["nice", "-n", "10", "bash", "-c", command], cwd=code, env=env, capture_output=True,
                          text=True, timeout=STEP_TIMEOUT_S)


def score(code: Path, root: Path) -> subprocess.CompletedProcess:
    """The eval as the worker runs it: from the pristine env dir, the candidate's directory named."""
    _, smoke = env_yaml_specs()
    return run_step(smoke.eval, CODE, root, TOOLKIT_CODE_DIR=str(code), PYTHONDONTWRITEBYTECODE="1")


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The baseline's smoke run and its eval, once for the module."""
    root = tmp_path_factory.mktemp("grpo_math")
    code = root / "code"
    shutil.copytree(CODE, code, ignore=shutil.ignore_patterns("validate.py", "grader.py", "__pycache__"))
    _, smoke = env_yaml_specs()
    prepared = run_step(smoke.prepare, CODE, root, PYTHONDONTWRITEBYTECODE="1")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert not (root / "data" / "smoke" / "val.jsonl").exists()
    assert (root / "data.hidden" / "smoke" / "val.jsonl").exists()
    run = run_step(smoke.run, code, root)
    assert run.returncode == 0, run.stderr[-3000:]
    return root, code, last_json(score(code, root))


@pytest.mark.slow
def test_smoke_run_then_eval_reports_the_best_validation_accuracy(smoke_run, train):
    root, _, metrics = smoke_run
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    # 4 smoke steps, validated as the real run is: from step 0 (untrained), every 2, none after the last step
    assert train.eval_steps == [0, 2]
    assert set(metrics["val_accuracy_per_step"]) == {"0", "2"}
    assert metrics["val_accuracy"] == max(metrics["val_accuracy_per_step"].values())
    assert metrics["val_problems"] == 32
    assert sorted(p.name for p in (root / "scratch" / "checkpoints").iterdir()) == ["step_0000", "step_0002"]


FORGING_TRAIN = '''
import json, os, pathlib
fake = {"val_accuracy": 1.0, "val_accuracy_per_step": {"2": 1.0}, "val_problems": 500}
print(json.dumps(fake))  # a metrics line in the run's own output
for where in (pathlib.Path("."), pathlib.Path(os.environ["TOOLKIT_SCRATCH"])):
    (where / "val_accuracy.json").write_text(json.dumps(fake))
    (where / "metrics.json").write_text(json.dumps(fake))
# a module that shadows the grader's dependency: marks everything correct and prints a fake last line
pathlib.Path("math_verify.py").write_text(
    "import atexit, json\\n"
    "atexit.register(lambda: print(json.dumps(%r)))\\n"
    "def parse(*a, **k): return [1]\\n"
    "def verify(*a, **k): return True\\n" % fake)
# an easier validation set where the old layout kept it (the data dir: read-only under the sandbox)
smoke_dir = pathlib.Path(os.environ["TOOLKIT_DATA_DIR"]) / "smoke"
(smoke_dir / "val.jsonl").write_text(json.dumps({"problem": "Say nothing.", "answer": "0"}) + "\\n")
'''


@pytest.mark.slow
def test_a_forging_run_does_not_change_the_evals_number(smoke_run):
    root, code, honest = smoke_run
    (code / "train.py").write_text(FORGING_TRAIN)  # keeps the honest checkpoints in the scratch dir
    _, smoke = env_yaml_specs()
    forged_run = run_step(smoke.run, code, root)
    assert forged_run.returncode == 0 and '"val_accuracy": 1.0' in forged_run.stdout
    forged = last_json(score(code, root))
    assert forged["val_accuracy_per_step"] == honest["val_accuracy_per_step"]
    assert forged["val_problems"] == honest["val_problems"] == 32
    assert forged["val_accuracy"] == honest["val_accuracy"] < 1.0


# ---- TOOLKIT_SEED: the toolkit's noise-floor and certification re-runs seed train.py, never the eval -----------


def load_train(monkeypatch, seed: str | None):
    monkeypatch.setenv("TOOLKIT_SMOKE", "1")
    if seed is None:
        monkeypatch.delenv("TOOLKIT_SEED", raising=False)
    else:
        monkeypatch.setenv("TOOLKIT_SEED", seed)
    return load_by_path("grpo_test_train_seeded", CODE / "train.py", code_on_path=True)


@pytest.mark.parametrize("value, seed", [(None, 42), ("7", 7), ("0", 0)])
def test_toolkit_seed_replaces_the_seed(monkeypatch, value, seed):
    assert load_train(monkeypatch, value).seed == seed


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "4294967296"])
def test_a_malformed_toolkit_seed_is_refused_by_name(monkeypatch, value):
    with pytest.raises(ValueError, match="TOOLKIT_SEED must be a decimal integer"):
        load_train(monkeypatch, value)


def test_the_locked_files_never_read_toolkit_seed():
    real, _ = env_yaml_specs()
    assert {"validate.py", "grader.py", "data.py"} <= set(real.locked)
    for name in real.locked:
        assert "TOOLKIT_SEED" not in (CODE / name).read_text(), name


# the preflight's main(), recording the questions it drew and the responses it sampled
RECORDING_RUN = '''
import json, random
import train
seen = {"problems": [], "responses": []}
sample, generate = random.sample, train.generate_hf
def recording_sample(population, k):
    batch = sample(population, k)
    seen["problems"] += [p["problem"] for p in batch]
    return batch
def recording_generate(*args):
    responses = generate(*args)
    seen["responses"] += responses
    return responses
random.sample, train.generate_hf = recording_sample, recording_generate
train.main()
print(json.dumps(seen))
'''


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """The smoke `prepare` alone (arithmetic problems and the tiny model), for preflight runs."""
    root = tmp_path_factory.mktemp("grpo_math_seed")
    _, smoke = env_yaml_specs()
    prepared = run_step(smoke.prepare, CODE, root, PYTHONDONTWRITEBYTECODE="1")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    return root


@pytest.mark.slow
def test_toolkit_seed_sets_the_questions_and_the_rollouts(smoke_data, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(CODE, code, ignore=shutil.ignore_patterns("validate.py", "grader.py", "__pycache__"))
    (code / "recording_run.py").write_text(RECORDING_RUN)

    def preflight(seed: str, name: str) -> dict:
        proc = run_step("python recording_run.py", code, smoke_data, TOOLKIT_QUICK_CHECK="1", TOOLKIT_SEED=seed,
                        TOOLKIT_SCRATCH=str(tmp_path / name), PYTHONDONTWRITEBYTECODE="1")
        seen = last_json(proc)
        assert len(seen["problems"]) == 4 and len(seen["responses"]) == 16  # one step of 4 questions x 4
        return seen

    first, again, other = preflight("1", "a"), preflight("1", "b"), preflight("2", "c")
    assert first == again
    assert first["problems"] != other["problems"] and first["responses"] != other["responses"]
