"""End to end: `toolkit execute` on a batch with a good idea, a diff that only applies after revision,
a diff touching the locked eval, a run-time crash and a time-out. Real SDK -> loopback fake server,
real patching, real worker processes (local executor here; real SLURM arrays in test_execute_slurm.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import copy_env, make_diff, scripted
from toolkit.cli import main
from toolkit.layout import RunLayout
from toolkit.state import load_state
from toolkit.testing.fake_llm import FakeLLMServer

IDEAS = {
    "IDEA-GOOD": "IDEA-GOOD: raise the learning rate to 0.3 so gradient descent converges within the step budget.",
    "IDEA-REVISE": "IDEA-REVISE: train for 4x more steps.",
    "IDEA-CHEAT": "IDEA-CHEAT: make the evaluation report a tiny error.",
    "IDEA-CRASH": "IDEA-CRASH: validate inputs aggressively.",
    "IDEA-SLOW": "IDEA-SLOW: wait for the data to settle before training.",
}


def _dump_env_diff() -> str:
    """A new file that records the environment of the candidate and of every process of its SLURM job on the
    node (the batch shell, the worker: LLM code could read their /proc/<pid>/environ), so tests can prove no
    API key reached the job."""
    body = ["import glob, json, os",
            "def environ(path):",
            "    try:",
            "        raw = open(path, 'rb').read().split(b'\\0')",
            "    except OSError:",
            "        return {}",
            "    return dict(e.decode(errors='replace').partition('=')[::2] for e in raw if e)",
            "job = os.environ.get('SLURM_JOB_ID')",
            "procs = [environ(p) for p in glob.glob('/proc/[0-9]*/environ')]",
            "mine = [env for env in procs if job and env.get('SLURM_JOB_ID') == job]",
            "json.dump({'self': dict(os.environ), 'job_processes': mine}, open('env_dump.json', 'w'))"]
    return (f"--- /dev/null\n+++ b/dump_env.py\n@@ -0,0 +1,{len(body)} @@\n"
            + "".join(f"+{line}\n" for line in body))


def batch_rules(code: Path) -> dict:
    good = make_diff(code, "train.py", "LR = 0.05 ", "LR = 0.3 ", "import os\n", "import os\nimport dump_env\n")
    good += _dump_env_diff()
    steps = make_diff(code, "train.py", 'STEPS = int(os.environ.get("TOY_STEPS", "50"))',
                      'STEPS = 4 * int(os.environ.get("TOY_STEPS", "50"))')
    broken = steps.replace("-STEPS = int(", "-STEPS = float(")
    cheat = make_diff(code, "eval.py", "mse = sum(", "mse = 0.01 + 0 * sum(")
    crash = make_diff(code, "train.py", "    w, b = train()\n", "    raise RuntimeError('boom')\n")
    slow = make_diff(code, "train.py", "    w, b = train()\n", "    import time; time.sleep(600)\n    w, b = train()\n")
    return {"IDEA-GOOD": lambda rev: good, "IDEA-REVISE": lambda rev: steps if rev else broken,
            "IDEA-CHEAT": lambda rev: cheat, "IDEA-CRASH": lambda rev: crash, "IDEA-SLOW": lambda rev: slow}


def write_inputs(tmp_path: Path, cluster: dict) -> tuple[Path, Path, Path]:
    env_dir = copy_env(tmp_path / "my_env")
    ideas = tmp_path / "ideas.jsonl"
    ideas.write_text("".join(json.dumps({"idea": text}) + "\n" for text in IDEAS.values()))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"implement": {"samples": 2, "revisions": 2, "workers": 5},
                                      "cluster": {"poll_s": 1.0, "lost_grace_s": 20.0, **cluster},
                                      "llm": {"implementer": {"backoff_s": 0.01, "max_tokens": 2000}}}))
    return env_dir, ideas, config


def run_batch(tmp_path: Path, cluster: dict, extra: list[str]) -> RunLayout:
    env_dir, ideas, config = write_inputs(tmp_path, cluster)
    with FakeLLMServer(scripted(batch_rules(env_dir / "code"))) as server:
        rc = main(["execute", str(ideas), "--env", str(env_dir), "--out", str(tmp_path / "run"),
                   "--config", str(config), "--llm", "anthropic", "--model", "claude-sonnet-4-6",
                   "--base-url", server.base_url, *extra])
    assert rc == 0
    return RunLayout(tmp_path / "run")


def rerun(tmp_path: Path) -> None:
    with FakeLLMServer(["unused"]) as server:
        rc = main(["execute", str(tmp_path / "ideas.jsonl"), "--env", str(tmp_path / "my_env"), "--out",
                   str(tmp_path / "run"), "--config", str(tmp_path / "run.yaml"), "--llm", "anthropic",
                   "--model", "claude-sonnet-4-6", "--base-url", server.base_url])
        assert rc == 0 and not server.requests


def check_batch(layout: RunLayout) -> None:
    state = load_state(layout)
    by_marker = {v.idea.split(":")[0]: v for v in state.candidates.values()}
    good, revise = by_marker["IDEA-GOOD"], by_marker["IDEA-REVISE"]
    assert (good.status, revise.status) == ("ok", "ok"), (good, revise)
    assert good.metric < 0.05 and revise.metric < 0.05          # both beat the baseline's 0.126
    assert abs(good.reward - 1 / good.metric) < 1e-9
    revise_impl = json.loads(layout.candidate(revise.cid).implement.read_text())
    assert revise_impl["revision"] >= 1, "the broken diff must have applied only after a revision"
    cheat = by_marker["IDEA-CHEAT"]
    assert cheat.implement_status == "invalid" and "eval.py" in cheat.implement_reason and not cheat.job_id
    assert by_marker["IDEA-CRASH"].status == "failed" and "exited with code" in by_marker["IDEA-CRASH"].reason
    slow = by_marker["IDEA-SLOW"]
    assert slow.status == "timeout", slow
    own_env = json.dumps(json.loads((layout.candidate(good.cid).code / "env_dump.json").read_text())["self"])
    assert "planted-secret" not in own_env and "API_KEY" not in own_env
    for view in (good, revise):
        result = json.loads(layout.candidate(view.cid).result.read_text())
        assert result["code_sha256"] and set(result["locked_sha256"]) == {"eval.py", "data.py"}
        assert result["job_id"] and result["node"]
        assert (layout.candidate(view.cid).patch).read_text().startswith("---")
    assert state.execution_rate() == pytest.approx(2 / 5)


@pytest.mark.slow
def test_execute_batch_local(tmp_path: Path) -> None:
    layout = run_batch(tmp_path, {"cluster": "local"}, [])
    check_batch(layout)
    calls = [json.loads(line) for line in layout.llm_calls.read_text().splitlines()]
    assert calls and all(c["status"] == "ok" for c in calls)
    submitted = layout.events.read_text().count('"kind": "submitted"')
    # the same command again resumes a finished run: nothing is implemented or submitted twice
    rerun(tmp_path)
    assert layout.events.read_text().count('"kind": "submitted"') == submitted
    assert len(layout.llm_calls.read_text().splitlines()) == len(calls)
    check_batch(layout)


def test_execute_rejects_bad_ideas_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "ideas.jsonl"
    bad.write_text('{"idea": "ok"}\nnot json\n')
    rc = main(["execute", str(bad), "--env", "tiny_lm", "--out", str(tmp_path / "run"), "--cluster", "debug"])
    assert rc == 2
    assert "ideas.jsonl:2" in capsys.readouterr().out
