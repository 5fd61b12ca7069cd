"""`toolkit rl`: GRPO on a tiny ideator built from a config, rollouts executed through the real executor.

The tiny random model writes gibberish, so the fake implementer (real SDK -> loopback server) maps ANY idea
text, by a hash, to one of four real diffs of the toy env: learning rates 0.3 / 0.1 / 0.01 (val_mse 0.0086 /
0.014 / 1.59, reward 1/val_mse) or a crash (reward 0). Rewards in a group therefore differ, deterministically.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console

from helpers import TOY_ENV, copy_env, make_diff
from toolkit.config import from_dict
from toolkit.envs import load_env
from toolkit.errors import ConfigError
from toolkit.report.tables import diversity, jaccard, word_set
from toolkit.rl import checkpoint
from toolkit.rl.cli import add_rl_parser
from toolkit.rl.config import MitigationConfig, OptimConfig, RLConfig, SamplingConfig, TinyModelConfig, load_rl_config
from toolkit.rl.grpo import group_advantages, make_optimizer, policy_gradient_step
from toolkit.rl.layout import RLLayout
from toolkit.rl.metrics import metrics_table
from toolkit.rl.policy import build_tiny, token_logprobs, train_tokenizer
from toolkit.rl.prompt import ideation_prompt, previous_results
from toolkit.rl.rewards import length_bonus, shape_reward
from toolkit.rl.sampling import Completion, Rollout, Sampler, clean_idea, split_completion
from toolkit.rl.trainer import Trainer
from toolkit.state import CandidateView
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

ROOT = Path(__file__).resolve().parents[2]
IDEA = re.compile(r"# The idea to implement\n(.*?)\n\n# Your answer", re.S)
CLOSE, EOS = 7, 9


# ---- fixtures: a hashing fake implementer and a tiny RL config ------------------------------------------

def toy_diffs(code: Path) -> list[str]:
    def lr(value: str) -> str:
        return make_diff(code, "train.py", "LR = 0.05 ", f"LR = {value} ")
    crash = make_diff(code, "train.py", "    w, b = train()\n", "    raise RuntimeError('boom')\n")
    return [lr("0.3"), lr("0.1"), lr("0.01"), crash]


def tiny_lm_diffs(code: Path) -> list[str]:
    def lr(value: str) -> str:
        return make_diff(code, "train.py", "learning_rate = 3e-3 ", f"learning_rate = {value} ")
    crash = make_diff(code, "train.py", "def main():\n", "def main():\n    assert quick_check, 'boom'\n")
    return [lr("1e-2"), lr("3e-4"), lr("1e-5"), crash]     # the crash passes the preflight, fails the run


def _prompt(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


def hashed_implementer(code: Path, make_diffs=toy_diffs):
    diffs = make_diffs(code)

    def respond(request: dict) -> FakeReply:
        found = IDEA.search(_prompt(request["body"]))
        idea = found.group(1) if found else ""
        pick = int(hashlib.sha256(idea.encode()).hexdigest(), 16) % len(diffs)
        return FakeReply(text="```diff\n" + diffs[pick] + "```\n")
    return respond


def rl_config(env_dir: Path, base_url: str, cluster: dict[str, Any], **changes: Any) -> dict[str, Any]:
    cfg = {"run": {"env": str(env_dir), "implement": {"samples": 1, "revisions": 0, "workers": 6},
                   "cluster": {"poll_s": 0.5, "lost_grace_s": 20.0, **cluster},
                   "llm": {"implementer": {"provider": "anthropic", "model": "claude-sonnet-4-6",
                                           "base_url": base_url, "backoff_s": 0.01, "max_tokens": 2000}}},
           "policy": {"tiny": {"vocab_size": 320, "hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1,
                               "max_positions": 16384}, "cpu_threads": 1},
           "sampling": {"backend": "hf", "group_size": 6, "think_budget_tokens": 12, "idea_max_tokens": 10},
           "optim": {"lr": 1e-3, "micro_batch": 3}, "steps": 2, "seed": 0}
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def rl(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="toolkit")
    add_rl_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rl", *argv])
    return args.func(args)


def start(tmp_path: Path, server: FakeLLMServer, env_dir: Path, cluster: dict[str, Any], name: str,
          *extra: str, **changes: Any) -> RLLayout:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(rl_config(env_dir, server.base_url, cluster, **changes)))
    assert rl("--config", str(config), "--out", str(tmp_path / name), *(extra or ("--cluster", "local"))) == 0
    return RLLayout(tmp_path / name)


def metrics(layout: RLLayout) -> list[dict[str, Any]]:
    return [json.loads(line) for line in layout.metrics.read_text().splitlines()]


def completion_logps(model: Any, layout: RLLayout, step: int) -> list[float]:
    saved = json.loads(layout.step(step).rollouts.read_text())
    rollouts = [Rollout.from_json(r) for r in saved["rollouts"]]
    with torch.no_grad():
        logps = token_logprobs(model, saved["prompt_ids"], [list(r.ids) for r in rollouts], 1.0)
    return [float((lp * torch.tensor(r.mask)).sum()) for lp, r in zip(logps, rollouts)]


def load_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path))


# ---- (1) two GRPO steps, rollouts as a real SLURM array ------------------------------------------------

ENVS = {"toy": (TOY_ENV, toy_diffs, {}, 50.0),                    # reward 1/val_mse: up to 117
        "tiny_lm": (ROOT / "envs" / "tiny_lm", tiny_lm_diffs, {"smoke": True}, 0.2)}   # 1/val_loss ~ 0.3


@pytest.mark.slurm
@pytest.mark.parametrize("env", [pytest.param("toy"), pytest.param("tiny_lm", marks=pytest.mark.slow)])
def test_grpo_on_slurm_moves_weights_along_advantages(tmp_path: Path, env: str) -> None:
    source, make_diffs, run_extra, good_reward = ENVS[env]
    env_dir = copy_env(tmp_path / env, source)
    with FakeLLMServer(hashed_implementer(env_dir / "code", make_diffs)) as server:
        layout = start(tmp_path, server, env_dir, {"cluster": "slurm", "partition": "debug"}, "rl",
                       run=run_extra, sampling={"group_size": 4 if env == "tiny_lm" else 6})
    rows = metrics(layout)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["idea_rate"] == 1.0                  # budget forcing: every rollout has an idea
        assert row["reward_max"] > good_reward and 0 < row["exec_rate"] <= 1
        assert row["sampling_s"] > 0 and row["execution_s"] > 0 and row["update_s"] > 0
        assert row["distinct_ideas"] >= 1 and row["mean_jaccard"] is not None
    events = (layout.step(1).exec_dir / "state" / "events.jsonl").read_text()
    submitted = [json.loads(line) for line in events.splitlines() if '"kind": "submitted"' in line]
    assert submitted and all(e["cluster"] == "slurm" and e["job_id"].split("_")[0].isdigit() for e in submitted)
    # the step-1 update, measured with the same model before (base) and after (checkpoint 1)
    advantages = [r["advantage"] for r in json.loads(layout.step(1).rewards.read_text())]
    assert max(advantages) > 0 > min(advantages), "rewards in the group must differ"
    before = completion_logps(load_model(layout.base_model), layout, 1)
    after = completion_logps(load_model(layout.checkpoint(1).policy), layout, 1)
    delta = [a - b for a, b in zip(after, before)]
    best, worst = advantages.index(max(advantages)), advantages.index(min(advantages))
    assert delta[best] > 0 and delta[worst] < 0, (advantages, delta)
    assert sum(a * d for a, d in zip(advantages, delta)) > 0


@pytest.mark.slurm
def test_trainer_runs_as_a_slurm_job_on_the_gpu_partition(tmp_path: Path) -> None:
    env_dir = copy_env(tmp_path / "toy")
    placement = {"gpus": 0, "cpus": 1, "mem_gb": 4, "timeout_min": 10}
    with FakeLLMServer(hashed_implementer(env_dir / "code")) as server:
        layout = start(tmp_path, server, env_dir, {"cluster": "debug"}, "job", "--partition", "h100", "--wait",
                       trainer=placement, steps=1)
    assert [r["step"] for r in metrics(layout)] == [1]
    job_id = next(layout.trainer_jobs.glob("*_submitted.pkl")).name.split("_")[0]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "Partition", "-j", job_id],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["h100"], out
    assert "GRPO: env reward" in next(layout.trainer_jobs.glob(f"{job_id}_0_log.out")).read_text()
    assert load_rl_config(layout.config).trainer.partition == "h100"


# ---- (2) resume continues the step count, the optimiser and the RNG ----------------------------------

def test_resume_continues_step_count_and_optimizer(tmp_path: Path) -> None:
    env_dir = copy_env(tmp_path / "toy")
    debug = {"cluster": "debug"}
    lora = {"policy": {"lora_rank": 4, "lora_targets": ["q_proj", "v_proj"]}, "optim": {"lr": 1e-2}}
    with FakeLLMServer(hashed_implementer(env_dir / "code")) as server:
        straight = start(tmp_path, server, env_dir, debug, "straight", **lora)
        split = start(tmp_path, server, env_dir, debug, "split", "--cluster", "local", "--steps", "1", **lora)
        assert [r["step"] for r in metrics(split)] == [1]
        saved = checkpoint.load_torch(split.checkpoint(1).optimizer)
        resumed = Trainer(split, load_rl_config(split.config), Console(quiet=True))
        assert resumed.step == 1
        state = resumed.optimizer.state_dict()
        assert _same_optimizer_state(state, saved) and _steps(state) == {1.0}
        del resumed
        assert rl("--out", str(split.root), "--steps", "2", "--resume") == 0
    assert [r["step"] for r in metrics(split)] == [1, 2]
    final = checkpoint.load_torch(split.checkpoint(2).optimizer)
    assert _steps(final) == {2.0}, "the resumed run continued Adam's step counter"
    assert _same_optimizer_state(final, checkpoint.load_torch(straight.checkpoint(2).optimizer))
    assert json.loads(split.step(2).rollouts.read_text()) == json.loads(straight.step(2).rollouts.read_text())
    assert json.loads(split.checkpoint(2).archive.read_text()) == json.loads(straight.checkpoint(2).archive.read_text())


def _steps(state: dict) -> set[float]:
    return {float(s["step"]) for s in state["state"].values()}


def _same_optimizer_state(a: dict, b: dict) -> bool:
    if a["state"].keys() != b["state"].keys() or a["param_groups"] != b["param_groups"]:
        return False
    return all(torch.equal(torch.as_tensor(a["state"][k][name]), torch.as_tensor(b["state"][k][name]))
               for k in a["state"] for name in a["state"][k])


def test_resume_flag_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        rl("--out", str(tmp_path / "nothing"), "--resume")
    with pytest.raises(ConfigError, match="pass --config"):
        rl("--out", str(tmp_path / "nothing"))


# ---- (3) units -----------------------------------------------------------------------------------------

def test_group_advantages_are_normalised_per_group() -> None:
    adv = group_advantages([0.0, 1.0, 2.0, 3.0])
    assert sum(adv) == pytest.approx(0.0, abs=1e-9)
    assert sum(a * a for a in adv) / 4 == pytest.approx(1.0, rel=1e-4)
    assert adv[0] < adv[1] < adv[2] < adv[3]
    assert group_advantages([5.0, 5.0, 5.0]) == [0.0, 0.0, 0.0]


def test_split_completion_and_clean_idea() -> None:
    assert split_completion((1, 2, CLOSE, 3, 4, EOS), CLOSE, (EOS,)) == ([1, 2], [3, 4])
    assert split_completion((1, 2, EOS), CLOSE, (EOS,)) == ([1, 2], None)       # ended inside the thinking
    assert split_completion((1, 2, 3), CLOSE, (EOS,)) == ([1, 2, 3], None)      # budget hit, not forced
    assert split_completion((1, CLOSE, 5, EOS, 6), CLOSE, (EOS,)) == ([1], [5])
    assert clean_idea("  \n ") is None and clean_idea(" <think> use LayerNorm ") == "use LayerNorm"


class ScriptedSampler(Sampler):
    """generate() answers from a script, so the two-phase logic is tested without a model."""

    def __init__(self, cfg: SamplingConfig, script: list[list[list[int]]]) -> None:
        super().__init__(cfg, CLOSE, (EOS,))
        self.script, self.calls = list(script), []

    def generate(self, prompts, n, max_tokens, stops):
        self.calls.append((prompts, n, max_tokens, stops))
        return self.script.pop(0)


def test_budget_forcing_closes_thinking_and_masks_the_forced_token() -> None:
    thoughts = [[1, 2, 3], [1, CLOSE], [1, EOS]]                       # budget hit / closed / ended
    sampler = ScriptedSampler(SamplingConfig(think_budget_tokens=3), [[thoughts], [[[4, EOS]], [[5, EOS]]]])
    done = sampler.sample([100], 3)
    assert done[0] == Completion((1, 2, 3, CLOSE, 4, EOS), (1, 1, 1, 0, 1, 1))
    assert done[1] == Completion((1, CLOSE, 5, EOS), (1, 1, 1, 1))
    assert done[2] == Completion((1, EOS), (1, 1))
    assert sampler.calls[1][0] == [[100, 1, 2, 3, CLOSE], [100, 1, CLOSE]] and sampler.calls[1][3] == (EOS,)
    unforced = ScriptedSampler(SamplingConfig(force_close_thinking=False), [[thoughts], [[[5, EOS]]]])
    assert unforced.sample([100], 3)[0] == Completion((1, 2, 3), (1, 1, 1))


def test_near_duplicate_share_uses_the_search_check() -> None:
    from toolkit.rl.metrics import near_duplicate_share

    ideas = ["Cosine schedule: decay the learning rate with a cosine to zero.",
             "Cosine schedule: decay the learning rate with a cosine to zero.",
             "Linear schedule: decay the learning rate linearly to zero.",
             "Weight decay 0.1: add decoupled weight decay of 0.1 to AdamW."]
    assert near_duplicate_share(ideas) == 0.25 and near_duplicate_share([]) is None


def test_diversity_metrics() -> None:
    same = diversity(["Use LayerNorm instead of RMSNorm"] * 4, 0.7)
    assert (same.distinct, same.mean_jaccard, same.top_share) == (1, 1.0, 1.0)
    apart = diversity(["raise the learning rate", "add weight decay", "an EMA of weights", "longer warmup"], 0.7)
    assert apart.distinct == 4 and apart.top_share == 0.25 and apart.mean_jaccard < 0.2
    near = diversity(["use layernorm instead of rmsnorm", "use layernorm instead of rmsnorm now", "ema"], 0.7)
    assert near.distinct == 2 and near.top_share == pytest.approx(2 / 3)
    assert jaccard(word_set("a b c"), word_set("b c d")) == pytest.approx(0.5)


def _rollout(idea: str | None, thinking_tokens: int = 100) -> Rollout:
    return Rollout(0, "r0000", (1,), (1,), "", idea, thinking_tokens, 3, False)


def _view(status: str, reward: float | None) -> CandidateView:
    return CandidateView(cid="r0000", status=status, reward=reward)


def test_mitigations() -> None:
    off = MitigationConfig()
    assert shape_reward(_rollout("x y"), _view("ok", 2.0), [], [], off).total == 2.0
    assert shape_reward(_rollout("x y"), _view("failed", None), [], [], off).total == 0.0
    assert shape_reward(_rollout(None), None, [], [], off).status == ""
    assert length_bonus(10_000, 0.001, 0.3) == 0.3 and length_bonus(100, 0.001, 0.3) == pytest.approx(0.1)
    cfg = MitigationConfig(length_reward_per_token=0.01, jaccard_penalty=0.5, novelty_bonus=1.0)
    prev, archive = [word_set("raise the learning rate")], [word_set("raise the learning rate"), word_set("ema")]
    repeat = shape_reward(_rollout("raise the learning rate", 100), _view("ok", 2.0), prev, archive, cfg)
    assert (repeat.length, repeat.jaccard_penalty, repeat.novelty) == (pytest.approx(0.3), 0.5, 0.0)
    novel = shape_reward(_rollout("add weight decay", 10), _view("ok", 2.0), prev, archive, cfg)
    assert novel.novelty == 1.0 and novel.jaccard_penalty == 0.0 and novel.total == pytest.approx(3.1)
    failed = shape_reward(_rollout("raise the learning rate"), _view("failed", None), prev, archive, cfg)
    assert failed.total == -0.5, "a failed run earns no length or novelty bonus but keeps the penalty"


def test_previous_results_in_the_prompt() -> None:
    archive = [{"step": 1, "idea": "lower lr", "status": "ok", "reward": 1.0},
               {"step": 1, "idea": "crash it", "status": "failed", "reward": None},
               {"step": 1, "idea": "higher lr", "status": "ok", "reward": 9.0},
               {"step": 0, "idea": "old", "status": "ok", "reward": 99.0}]
    rows = previous_results(archive, 1, 2)
    assert [r["idea"] for r in rows] == ["higher lr", "lower lr"]
    spec = load_env(str(ROOT / "tests" / "fixtures" / "toy_env"))
    text = ideation_prompt(spec, previous_results(archive, 1, 5))
    assert "[reward 9] higher lr" in text and "[failed] crash it" in text and "old" not in text
    assert "LR = 0.05" in text and "def split" not in text.split("===== eval.py")[1].split("=====")[0]
    assert "previous round" not in ideation_prompt(spec, [])


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(RLConfig, {"sampling": {"group": 4}}, "rl.yaml")
    with pytest.raises(ConfigError, match="lora_rank"):
        from_dict(RLConfig, {"sampling": {"backend": "vllm"}}, "rl.yaml")
    with pytest.raises(ConfigError, match="at least 2"):
        from_dict(RLConfig, {"sampling": {"group_size": 1}}, "rl.yaml")
    for name in ("rl_tiny.yaml", "rl_ideator.yaml", "rl_grpo_math.yaml"):
        assert load_rl_config(ROOT / "configs" / name).sampling.group_size >= 4
    assert load_rl_config(ROOT / "configs" / "rl_ideator.yaml").policy.model == "Qwen/Qwen3-30B-A3B"
    with pytest.raises(ConfigError, match="trainer.executor='job' is not one of daemon, in_job"):
        from_dict(RLConfig, {"trainer": {"executor": "job"}}, "rl.yaml")


def test_a_trainer_job_that_executes_its_own_ideas_gets_no_api_key(tmp_path: Path) -> None:
    """A job never gets API keys, so `executor: in_job` with a keyed implementer is refused before any sbatch."""
    from toolkit.rl.cli import check_job_llm

    cfg = from_dict(RLConfig, {"trainer": {"cluster": "slurm", "executor": "in_job"},
                               "run": {"llm": {"implementer": {"provider": "anthropic", "model": "m"}}}}, "rl.yaml")
    with pytest.raises(ConfigError, match="never gets API keys; use trainer.executor: daemon"):
        check_job_llm(cfg)
    keyless = {"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    check_job_llm(from_dict(RLConfig, {"trainer": {"executor": "in_job"}, "run": {"llm": {"implementer": keyless}}},
                            "rl.yaml"))
    assert from_dict(RLConfig, {"trainer": {"cluster": "slurm"}}, "rl.yaml").trainer.hands_off


def test_grpo_math_rl_config_is_the_papers() -> None:
    """The paper's RL on the GRPO environment: group size 256, the Qwen3-30B-A3B ideator, rollouts of at most
    8192 tokens (thinking + idea), 40 steps; its env and executor settings load as a real run's would."""
    cfg = load_rl_config(ROOT / "configs" / "rl_grpo_math.yaml")
    assert cfg.sampling.group_size == 256 and cfg.policy.model == "Qwen/Qwen3-30B-A3B" and cfg.steps == 40
    assert cfg.sampling.think_budget_tokens + cfg.sampling.idea_max_tokens == 8192
    assert cfg.run.env == "grpo_math" and load_env(cfg.run.env).resources.gpus == 1
    assert "UNVERIFIED AT THIS SCALE" in (ROOT / "configs" / "rl_grpo_math.yaml").read_text()


def test_metrics_table_renders_rows() -> None:
    console = Console(record=True, width=200)
    console.print(metrics_table([{"step": 1, "reward_mean": 0.25, "reward_max": 0.5, "exec_rate": 0.75,
                                  "distinct_ideas": 3, "top_idea_share": 0.5}]))
    text = console.export_text()
    assert "0.25" in text and "75%" in text and "50%" in text


def test_update_raises_logprob_of_positive_advantage() -> None:
    """One GRPO update on a tiny model, without the executor: the direction of the change in log-probability."""
    tokenizer = train_tokenizer("raise the learning rate and add weight decay " * 20, 300)
    model = build_tiny(TinyModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1), len(tokenizer), 0)
    prompt = tokenizer.encode("propose an idea")
    texts = ["raise the learning rate", "add weight decay", "the the the", "decay the rate"]
    rollouts = [Rollout(k, f"r{k}", tuple(tokenizer.encode(t)), (1,) * len(tokenizer.encode(t)), "", t, 0, 0, False)
                for k, t in enumerate(texts)]
    advantages = group_advantages([2.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        before = [float(lp.sum()) for lp in token_logprobs(model, prompt, [list(r.ids) for r in rollouts], 1.0)]
    optimizer = make_optimizer(model, OptimConfig(lr=1e-3))
    stats = policy_gradient_step(model, optimizer, prompt, rollouts, advantages, OptimConfig(lr=1e-3), 1.0)
    with torch.no_grad():
        after = [float(lp.sum()) for lp in token_logprobs(model, prompt, [list(r.ids) for r in rollouts], 1.0)]
    assert stats.trained_rollouts == 2 and stats.grad_norm > 0        # the two zero-advantage rollouts skipped
    assert after[0] > before[0] and after[2] < before[2]
    skipped = policy_gradient_step(model, optimizer, prompt, rollouts, [0.0] * 4, OptimConfig(), 1.0)
    assert skipped.trained_rollouts == 0


# ---- (1b) a SLURM trainer hands its steps to the executor daemon outside it --------------------------------

def rl_process(config: Path, out: Path) -> subprocess.Popen:
    """`toolkit rl` as a user runs it on the login node: it submits (or re-attaches to) the trainer job, then
    executes the steps' ideas until the trainer is done."""
    return subprocess.Popen([sys.executable, "-m", "toolkit.cli", "rl", "--config", str(config), "--out", str(out),
                             "--partition", "debug"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition: Any, what: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def events_of(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = run_dir / "state" / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


@pytest.mark.slurm
def test_a_slurm_trainer_hands_its_steps_to_a_daemon_outside_it_and_survives_either_dying(tmp_path: Path) -> None:
    """The trainer job samples and updates; the daemon outside it implements, submits and collects. Kill the
    daemon mid-step (kill -9), then cancel the trainer mid-step: each rerun of the same command resumes, and
    every step completes once, with no idea implemented, submitted or scored twice."""
    env_dir = copy_env(tmp_path / "toy")
    implement = hashed_implementer(env_dir / "code")
    trainer = {"gpus": 0, "cpus": 1, "mem_gb": 4, "timeout_min": 10}
    with FakeLLMServer(lambda request: dataclasses.replace(implement(request), delay_s=1.0)) as server:
        cfg = rl_config(env_dir, server.base_url, {"cluster": "slurm", "partition": "debug"}, trainer=trainer,
                        sampling={"group_size": 4})
        config, out = tmp_path / "rl.yaml", tmp_path / "rl"
        config.write_text(yaml.safe_dump(cfg))
        layout = RLLayout(out)
        first = rl_process(config, out)
        wait_for(lambda: events_of(layout.step(1).exec_dir, "submitted"), "step 1's first submission")
        first.kill()                                        # the daemon dies mid-step 1
        first.wait()
        job_id = json.loads(layout.trainer_job.read_text())["job_id"]
        second = rl_process(config, out)                    # re-attaches to the live trainer job
        wait_for(lambda: layout.step(2).request.exists(), "step 2's ideas")
        subprocess.run(["scancel", job_id], check=True)     # the trainer dies mid-step 2
        said, _ = second.communicate(timeout=240)           # the daemon says the trainer is gone ...
        assert second.returncode != 0 and "the trainer job ended (cancelled)" in said, said
        third = rl_process(config, out)                     # ... and the same command resumes it
        output, _ = third.communicate(timeout=400)
        assert third.returncode == 0, output
    assert [r["step"] for r in metrics(layout)] == [1, 2]
    jobs = sorted({p.name.split("_")[0] for p in layout.trainer_jobs.glob("*_submitted.pkl")})
    assert len(jobs) == 2 and job_id in jobs, jobs           # the original trainer and the one after the cancel
    for step in (1, 2):
        run_dir = layout.step(step).exec_dir
        for kind in ("idea", "implemented", "submitted", "result"):
            cids = [e["cid" if kind != "idea" else "idea_id"] for e in events_of(run_dir, kind)]
            assert sorted(cids) == sorted(set(cids)) and len(cids) == 4, (step, kind, cids)
