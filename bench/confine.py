"""Benchmark 7: what confining candidate code costs, per stage.

Every step that runs candidate code (the run, the quick check, the eval's model child) starts through the
confinement launcher (`python -m toolkit.cluster.confine`: a subreaper that applies Landlock and a user namespace,
waits, and reaps by ancestry). Measured here, medians of ROUNDS:
  launch:      `true` through the launcher, against `true` started directly and against a bare interpreter
               start (`python -c pass`, the floor of any Python launcher);
  policy:      building a candidate policy (listing the system trees and site-packages);
  restrict:    the Landlock ruleset + restrict_self in a forked child;
  reap:        finding and killing one double-forked leftover;
  model child: starting the tiny_lm scorer's confined child (torch import included) and one forward call,
               against the same child unconfined;
  scorer:      tiny_lm's whole trusted eval (two children, 1,152 windows with the twin audit) against the
               in-process eval it replaced (git show d42574a:envs/tiny_lm/code/eval.py), on one checkpoint.
Target: under 0.1 s per confined stage (launch + policy + restrict + reap).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import Report, ms, run_bench, secs
from toolkit.cluster import confine
from toolkit.cluster.scoring import ModelChild

ROUNDS = 10
REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "envs" / "tiny_lm" / "code"
OLD_EVAL_COMMIT = "d42574a"


def median_s(fn, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def policy_for(work: Path) -> confine.Policy:
    for name in ("code", "scratch"):
        (work / name).mkdir(exist_ok=True)
    return confine.candidate_policy(work / "code", work / "scratch", [], confine.resolve("auto"))


def launch_s(work: Path, argv: list[str]) -> float:
    policy = policy_for(work)
    launch = confine.launch_argv(policy, argv, work / "control")
    return median_s(lambda: subprocess.run(launch.argv, cwd=work / "code", check=True))


def restrict_s(work: Path) -> float:
    policy = policy_for(work)

    def once() -> None:
        pid = os.fork()
        if pid == 0:
            try:
                confine.landlock_restrict(policy)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    fork_only = median_s(lambda: os.waitpid(_fork_exit(), 0))
    return max(0.0, median_s(once) - fork_only)


def _fork_exit() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def reap_s(work: Path) -> float:
    """One leftover (double fork, setsid): time from the command's exit to the launcher's exit."""
    leftover = ["sh", "-c", "setsid sh -c 'sleep 60 &' ; exit 0"]
    plain = ["sh", "-c", "exit 0"]
    return max(0.0, launch_s(work, leftover) - launch_s(work, plain))


def prepared_checkpoint(work: Path, data: Path) -> Path:
    code = work / "tiny"
    shutil.copytree(TINY, code, ignore=shutil.ignore_patterns("eval.py", "__pycache__"))
    env = {**os.environ, "TOOLKIT_DATA_DIR": str(data), "TRAIN_BUDGET_S": "3"}
    subprocess.run([sys.executable, "data.py"], cwd=TINY, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "train.py"], cwd=code, env=env, check=True, capture_output=True)
    (work / "scratch").mkdir(exist_ok=True)
    return code


LOADER = ("import torch\ntorch.set_num_threads(1)\nfrom train import GPT, GPTConfig\n"
          "c = torch.load('ckpt.pt', weights_only=True)\nm = GPT(GPTConfig(**c['config']))\n"
          "m.load_state_dict(c['model'])\nm.eval()\ndef forward(x):\n    return m(x)\n")


def child_s(code: Path, scratch: Path, sandbox: str) -> float:
    import torch

    def once() -> None:
        with ModelChild(LOADER, code_dir=str(code), scratch=str(scratch), sandbox=sandbox) as model:
            model(torch.zeros(32, 128, dtype=torch.long))
    return median_s(once, 5)


def scorer_s(code: Path, data: Path, old: bool, work: Path) -> float:
    env = {**os.environ, "TOOLKIT_DATA_DIR": str(data), "TOOLKIT_HIDDEN_DIR": f"{data}.hidden",
           "TOOLKIT_CODE_DIR": str(code), "TOOLKIT_SCRATCH": str(work / "scratch"), "PYTHONDONTWRITEBYTECODE": "1"}
    if old:   # the old eval ran in the candidate's directory, importing its train.py in-process
        source = subprocess.run(["git", "show", f"{OLD_EVAL_COMMIT}:envs/tiny_lm/code/eval.py"], cwd=REPO,
                                check=True, capture_output=True, text=True).stdout
        (code / "old_eval.py").write_text(source)
        cmd, cwd = [sys.executable, "old_eval.py"], code
    else:
        cmd, cwd = [sys.executable, "eval.py"], TINY
        env.update(PYTHONPATH=str(TINY), PYTHONSAFEPATH="1")
    return median_s(lambda: subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True), 3)


def body(work: Path, report: Report) -> None:
    mechanism = confine.describe(confine.resolve("auto"), confine.userns_available())
    plain_true = median_s(lambda: subprocess.run(["true"], check=True))
    bare_python = median_s(lambda: subprocess.run([sys.executable, "-I", "-c", "pass"], check=True))
    launched = launch_s(work, ["true"])
    policy = median_s(lambda: policy_for(work))
    restrict, reap = restrict_s(work), reap_s(work)
    stage = launched + policy
    report.figures.update(mechanism=mechanism, plain_true_s=plain_true, bare_python_s=bare_python,
                          launch_s=launched, policy_s=policy, restrict_s=restrict, reap_one_s=reap)
    report.add("confined stage: launcher start + policy (`true`)", secs(stage), f"{ms(plain_true)} (`true` unconfined)",
               "< 0.1 s", stage < 0.1)
    report.add("  of which the launcher (an interpreter start)", ms(launched),
               f"{ms(bare_python)} (`python -I -c pass`)", "", None)
    report.add("  of which building the policy", ms(policy), "", "", None)
    report.add("  of which Landlock + user namespace (in the child)", ms(restrict), "", "", None)
    report.add("reaping one double-forked leftover", ms(reap), "", "", None)
    data = work / "data"
    code = prepared_checkpoint(work, data)
    confined, unconfined = child_s(code, work / "scratch", "auto"), child_s(code, work / "scratch", "none")
    report.add(f"tiny_lm model child start + 1 forward ({mechanism})", secs(confined), f"{secs(unconfined)} unconfined",
               "", None)
    new, old = scorer_s(code, data, False, work), scorer_s(code, data, True, work)
    report.figures.update(child_s=confined, child_unconfined_s=unconfined, scorer_s=new, old_scorer_s=old)
    report.add("tiny_lm trusted scorer (2 children, 1,152 windows, twin audit)", secs(new),
               f"{secs(old)} (the in-process eval it replaced, 672 windows)", "", None)
    report.notes.append(f"mechanism here: {mechanism}; every figure is a median of {ROUNDS} (scorer: 3).")


if __name__ == "__main__":
    run_bench("confine", body, "what confining candidate code costs per stage")
