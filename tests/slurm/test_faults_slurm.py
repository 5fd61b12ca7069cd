"""Fault injection on the dev SLURM cluster: cancelled, preempted (requeued), killed and timed-out tasks,
a drained node; each ends with the right status, the retry policy reruns what deserves it, nothing else in
the batch is disturbed and no result is lost."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import copy_env, make_diff, scripted
from toolkit.config import ClusterConfig, ImplementConfig, LLMConfig, RunConfig
from toolkit.layout import RunLayout
from toolkit.llm.base import LLMSettings
from toolkit.loop import execute_ideas
from toolkit.records import Idea
from toolkit.state import load_state
from toolkit.testing.fake_llm import FakeLLMServer


def sleepy(code: Path, seconds: int, once: bool) -> str:
    """train.py sleeps first; with once=True only on its first run in this directory (so a retry is quick)."""
    guard = "if not os.path.exists('.slept'):\n        open('.slept', 'w').close()\n        " if once else ""
    body = f"    import time\n    {guard}time.sleep({seconds})\n    w, b = train()\n"
    return make_diff(code, "train.py", "    w, b = train()\n", body)


def config(tmp_path: Path, server_url: str, env: Path, **cluster) -> RunConfig:
    llm = LLMSettings(provider="openai-compatible", model="fake", base_url=server_url + "/v1", backoff_s=0.01)
    return RunConfig(env=str(env), llm=LLMConfig(ideator=llm, implementer=llm),
                     implement=ImplementConfig(samples=1, revisions=0),
                     cluster=ClusterConfig(cluster="slurm", poll_s=1.0, lost_grace_s=8, **cluster))


def job_of(run: Path, marker: str, timeout_s: float = 300) -> str:
    end = time.time() + timeout_s
    while time.time() < end:
        for view in load_state(RunLayout(run)).candidates.values():
            if marker in view.idea and view.job_id:
                return view.job_id
        time.sleep(0.3)
    raise AssertionError(f"{marker} was never submitted")


def kill_worker(job_id: str) -> None:
    """SIGKILL the task's worker process and everything under it: the task dies without a result file."""
    array, _, task = job_id.partition("_")     # a batch of one is a plain job (submitit), not an array task
    ids = (f"SLURM_ARRAY_JOB_ID={array}", f"SLURM_ARRAY_TASK_ID={task}") if task else (f"SLURM_JOB_ID={job_id}",)
    marks = (*(i.encode() for i in ids), b"SUBMITIT_EXECUTOR")
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if all(m in environ for m in marks) and b"submitit.core._submit" in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)
            return
    raise AssertionError(f"no worker process found for {job_id}")


def wait_running(job_id: str, timeout_s: float = 300) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        if "RUNNING" in out:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never ran")


@pytest.mark.slurm
@pytest.mark.slow
def test_cluster_faults(tmp_path: Path) -> None:
    env = copy_env(tmp_path / "env")
    spec = yaml.safe_load((env / "env.yaml").read_text())
    spec["resources"]["time_min"] = 5              # the worker's own limit is far away: SLURM's hits first
    slow_env = tmp_path / "slow_env"
    copy_env(slow_env, env)
    (slow_env / "env.yaml").write_text(yaml.safe_dump(spec))
    code = env / "code"
    rules = {"CANCEL-ME": lambda r: sleepy(code, 60, once=False), "REQUEUE-ME": lambda r: sleepy(code, 12, once=True),
             "KILL-ME": lambda r: sleepy(code, 60, once=True), "DRAIN-ME": lambda r: sleepy(code, 3, once=False),
             "GOOD": lambda r: make_diff(code, "train.py", "LR = 0.05 ", "LR = 0.3 "),
             "OVERRUN": lambda r: sleepy(code, 300, once=False)}
    ideas = [Idea(idea_id=f"i{n}", text=f"{m}: idea {n}") for n, m in enumerate(
        ["CANCEL-ME", "REQUEUE-ME", "KILL-ME", "GOOD", "DRAIN-ME"])]
    overrun = [Idea(idea_id="o0", text="OVERRUN: train for five minutes")]
    states = {}
    with FakeLLMServer(scripted(rules)) as server:
        main_cfg = config(tmp_path, server.base_url, env, array_parallelism=4)
        slow_cfg = config(tmp_path, server.base_url, slow_env, sbatch_extra={"time": "1"}, time_margin_min=0)
        threads = [
            threading.Thread(target=lambda: states.update(main=execute_ideas(tmp_path / "main", main_cfg, ideas))),
            threading.Thread(target=lambda: states.update(slow=execute_ideas(tmp_path / "slow", slow_cfg, overrun))),
        ]
        for t in threads:
            t.start()
        run = tmp_path / "main"
        cancel, requeue, kill = (job_of(run, m) for m in ("CANCEL-ME", "REQUEUE-ME", "KILL-ME"))
        job_of(run, "DRAIN-ME")                                                 # submitted before any fault
        for job in (cancel, requeue, kill):
            wait_running(job)
        subprocess.run(["scancel", cancel], check=True)                        # a user cancels a task
        subprocess.run(["scontrol", "requeue", requeue], check=True)           # preemption: requeued by SLURM
        slept = run / "candidates" / "i2" / "code" / ".slept"
        end = time.time() + 120
        while not slept.exists() and time.time() < end:                        # its training has started
            time.sleep(0.2)
        kill_worker(kill)                                                      # killed: no result file
        node = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True).stdout.split()[0]
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=fault-test"], check=True)
        time.sleep(5)                                                          # a drained node runs nothing new
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True)
        for t in threads:
            t.join(timeout=420)
    main, slow = states["main"].candidates, states["slow"].candidates
    by = {v.idea.split(":")[0]: v for v in main.values()}
    assert by["CANCEL-ME"].status == "lost" and "CANCELLED" in by["CANCEL-ME"].reason
    assert by["REQUEUE-ME"].status == "ok" and by["REQUEUE-ME"].attempt == 0
    assert by["KILL-ME"].status == "ok" and by["KILL-ME"].attempt == 1, by["KILL-ME"]   # retried once, then ok
    assert by["GOOD"].status == "ok" and by["DRAIN-ME"].status == "ok"
    assert slow["o0"].status == "timeout" and "SLURM time limit" in slow["o0"].reason and slow["o0"].attempt == 0
    log = RunLayout(run).events.read_text()
    assert log.count('"kind": "result"') == 5      # every task ends with exactly one verdict


@pytest.mark.slurm
@pytest.mark.slow
def test_node_down_while_jobs_run(tmp_path: Path) -> None:
    """The node goes down under running tasks: SLURM requeues them (JobRequeue=1) or the daemon retries
    them as lost; either way every task ends ok and nothing is submitted twice at the same attempt."""
    env = copy_env(tmp_path / "env")
    rules = {"DOWN-ME": lambda r: sleepy(env / "code", 20, once=True)}
    ideas = [Idea(idea_id=f"d{n}", text=f"DOWN-ME: idea {n}") for n in range(2)]
    node = subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True).stdout.split()[0]
    states = {}
    with FakeLLMServer(scripted(rules)) as server:
        cfg = config(tmp_path, server.base_url, env)
        thread = threading.Thread(target=lambda: states.update(run=execute_ideas(tmp_path / "run", cfg, ideas)))
        thread.start()
        for n in range(2):
            slept = tmp_path / "run" / "candidates" / f"d{n}" / "code" / ".slept"
            end = time.time() + 300
            while not slept.exists() and time.time() < end:
                time.sleep(0.2)
        try:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=fault-test"], check=True)
            time.sleep(3)
        finally:
            # ReturnToService=2 may have brought the node back already ("Invalid node state" then)
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        states_seen = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout
        assert "down" not in states_seen and "drain" not in states_seen, states_seen
        thread.join(timeout=400)
    views = states["run"].candidates
    assert all(v.status == "ok" for v in views.values()), views
    events = (tmp_path / "run" / "state" / "events.jsonl").read_text().splitlines()
    first = [e for e in events if '"kind": "submitted"' in e and '"attempt": 0' in e]
    assert len(first) == 2
