"""Benchmark 5: what the daemon costs the login node while it waits on running jobs.

A real `toolkit execute` daemon (a subprocess, default poll_s) implements 8 ideas against the loopback fake
LLM server, submits them to the dev cluster as one array of jobs that sleep for 10 minutes, and then only
waits. Once all 8 are submitted, /proc/<pid> is sampled for SAMPLE_S seconds: CPU (the daemon's own plus the
sacct/squeue children it waited for) and memory (VmRSS, VmHWM). Two ways of running it: in a terminal (a
pseudo-terminal, as under tmux: the Rich live view redraws) and detached (output to a file, as under nohup).
Targets: under 1 % of a core and under 300 MB.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

from benchlib import REPO, Report, SlurmCalls, cancel, make_diff, real_slurm, run_bench, sleep_env
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

IDEAS = 8
SAMPLE_S = 40.0                  # four polls at the default poll_s of 10 s
STARTUP_TIMEOUT_S = 180.0
CPU_TARGET, MEM_TARGET_MB = 1.0, 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_inputs(work: Path, env: Path, base_url: str) -> tuple[Path, Path, Path]:
    ideas = work / "ideas.jsonl"
    ideas.write_text("".join(json.dumps({"idea": f"idea {i}: train for {10 + i} steps"}) + "\n"
                             for i in range(IDEAS)))
    llm = {"provider": "openai-compatible", "model": "bench", "base_url": base_url, "backoff_s": 0.01}
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump({"implement": {"samples": 2, "revisions": 0, "workers": IDEAS},
                                      "cluster": {"cluster": "slurm", "partition": "debug"},
                                      "llm": {"implementer": llm, "ideator": llm}}))
    return env, ideas, config


def responder(code: Path):
    diff = make_diff(code, "train.sh", "STEPS=10", "STEPS=20")
    return lambda request: FakeReply(text="```diff\n" + diff + "```\n")


def start_daemon(work: Path, mode: str, env: Path, ideas: Path, config: Path) -> tuple[subprocess.Popen, Path]:
    run_dir = work / f"idle-{mode}"
    cmd = [sys.executable, "-m", "toolkit.cli", "execute", str(ideas), "--env", str(env), "--out", str(run_dir),
           "--config", str(config)]
    environ = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "PYTHONPATH": str(REPO)}
    if mode == "terminal":
        leader, follower = os.openpty()
        proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, env=environ, cwd=work)
        os.close(follower)
        threading.Thread(target=_drain, args=(leader,), daemon=True).start()
    else:
        with (work / f"{mode}.out").open("w") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=environ, cwd=work)
    return proc, run_dir


def _drain(fd: int) -> None:
    """Read the terminal's output, as a terminal would (a full pty would block the daemon)."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def wait_all_submitted(proc: subprocess.Popen, run_dir: Path) -> list[str]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    events = run_dir / "state" / "events.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        lines = events.read_text().splitlines() if events.exists() else []
        jobs = [json.loads(line)["job_id"] for line in lines if '"kind": "submitted"' in line]
        if len(jobs) >= IDEAS:
            return jobs
        time.sleep(1.0)
    raise RuntimeError(f"the daemon did not submit {IDEAS} jobs within {STARTUP_TIMEOUT_S} s (exit {proc.poll()})")


def cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime: the daemon and the SLURM commands it ran."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])


def memory_mb(pid: int) -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")} | {"threads": int(status["Threads"])}


def sample(pid: int, calls: SlurmCalls) -> dict:
    mark, ticks0, start = calls.mark(), cpu_ticks(pid), time.monotonic()
    rss = []
    while time.monotonic() - start < SAMPLE_S:
        time.sleep(1.0)
        rss.append(memory_mb(pid)["VmRSS"])
    elapsed_s = time.monotonic() - start
    cpu_s = (cpu_ticks(pid) - ticks0) / CLOCK_TICKS
    return {"cpu_percent": 100 * cpu_s / elapsed_s, "cpu_s": cpu_s, "elapsed_s": elapsed_s,
            "rss_mb_max": max(rss), **memory_mb(pid), "slurm_commands": dict(Counter(calls.since(mark)))}


def stop(proc: subprocess.Popen, jobs: list[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    cancel(jobs)


def measure(work: Path, mode: str, calls: SlurmCalls, inputs: tuple[Path, Path, Path]) -> dict:
    proc, run_dir = start_daemon(work, mode, *inputs)
    jobs: list[str] = []
    try:
        jobs = wait_all_submitted(proc, run_dir)
        time.sleep(2.0)                                   # let the submitting tick finish
        figures = sample(proc.pid, calls)
        figures["jobs_running"] = _running(jobs)
        return figures
    finally:
        stop(proc, jobs)


def _running(jobs: list[str]) -> int:
    masters = sorted({j.split("_")[0] for j in jobs})
    text = real_slurm(["squeue", "-h", "-r", "-t", "R", "-o", "%i", "-j", ",".join(masters)])
    return len(text.split())


def body(work: Path, report: Report) -> None:
    calls = SlurmCalls(work).install()
    env = sleep_env(work / "env", run="sleep 600", time_min=15.0)
    with FakeLLMServer(responder(env / "code")) as server:
        inputs = write_inputs(work, env, server.openai_base_url)
        runs = {mode: measure(work, mode, calls, inputs) for mode in ("terminal", "detached")}
    report.figures.update(runs)
    for mode, r in runs.items():
        per_min = sum(r["slurm_commands"].values()) * 60 / r["elapsed_s"]
        report.add(f"CPU while waiting, {mode} (incl. sacct)", f"{r['cpu_percent']:.2f} % of a core",
                   "", f"< {CPU_TARGET:g} %", r["cpu_percent"] < CPU_TARGET)
        report.add(f"memory while waiting, {mode} (VmRSS max; peak VmHWM)",
                   f"{r['rss_mb_max']:.0f} MB; peak {r['VmHWM']:.0f} MB", "", f"< {MEM_TARGET_MB:g} MB",
                   r["rss_mb_max"] < MEM_TARGET_MB)
        report.add(f"SLURM commands per minute, {mode}", f"{per_min:.1f} ({_fmt(r['slurm_commands'])})", "",
                   "", None)
    report.add("jobs running / submitted during the sample", f"{runs['detached']['jobs_running']} / {IDEAS}",
               "", "", None)
    terminal, detached = runs["terminal"]["cpu_percent"], runs["detached"]["cpu_percent"]
    if terminal >= CPU_TARGET > detached:
        report.notes.append(f"in a terminal the daemon spends {terminal - detached:.2f} % of a core more than "
                            "detached: the Rich live view is redrawn on a timer (twice a second) although it only "
                            "changes when a tick changes the state. Fix: Live(auto_refresh=False), a refresh per tick.")


def _fmt(counts: dict) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none"


if __name__ == "__main__":
    run_bench("daemon_idle", body, "the daemon's CPU and memory while it waits on running jobs")
