"""Shared pieces of the benchmarks: SLURM command counting, a `sleep` environment, synthetic run directories
written in the toolkit's real record formats, and the table + JSON every benchmark prints.

Benchmarks are scripts, not tests: each `bench/<name>.py` prints its figures beside the alternative and
target, and writes the same as JSON with `--json PATH` (bench/report.py turns those into RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from toolkit import fsio  # noqa: E402
from toolkit.cluster.slurm import SlurmCluster  # noqa: E402
from toolkit.config import ClusterConfig, ImplementConfig, LLMConfig, RunConfig  # noqa: E402
from toolkit.execute.pipeline import Parts  # noqa: E402
from toolkit.layout import RunLayout  # noqa: E402
from toolkit.llm.base import LLMSettings  # noqa: E402
from toolkit.records import Idea, ImplementOutcome, Result, to_json  # noqa: E402
from toolkit.runs import open_run  # noqa: E402
from toolkit.testing.diffs import make_diff  # noqa: E402,F401 (the benchmarks import it from here)

SLURM_COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "scontrol", "sinfo")
UNREACHABLE_LLM = "http://127.0.0.1:9/v1"      # benchmarks that never call the LLM still build a client


# ---- the report --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    what: str
    ours: str
    alternative: str
    target: str
    met: bool | None                   # None: a figure without a target


@dataclass
class Report:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)     # raw numbers, for the JSON
    notes: list[str] = field(default_factory=list)            # causes of missed targets, caveats

    def add(self, what: str, ours: str, alternative: str, target: str, met: bool | None) -> None:
        self.rows.append(Row(what, ours, alternative, target, met))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "rows": [asdict(r) for r in self.rows],
                "figures": self.figures, "notes": self.notes, "host": os.uname().nodename,
                "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                "finished_at": datetime.now().isoformat(timespec="seconds")}


def met_text(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[met]


def print_report(report: Report) -> None:
    header = ("what", "ours", "alternative", "target", "met?")
    cells = [header] + [(r.what, r.ours, r.alternative, r.target, met_text(r.met)) for r in report.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n== {report.name}: {report.title}")
    for row in cells:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    for note in report.notes:
        print(f"  note: {note}")


def run_bench(name: str, body: Callable[[Path, Report], None], title: str) -> Report:
    """Parse --json/--keep, run `body(workdir, report)` in a scratch folder, print and save the report."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    args = parser.parse_args()
    report = Report(name, title)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=scratch_root()))
    try:
        body(workdir, report)
    finally:
        if args.keep:
            print(f"scratch kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report)
    if args.json:
        fsio.atomic_write_json(args.json, report.to_json())
    return report


def scratch_root() -> Path:
    """Job output must be visible to slurmd: on a real cluster point BENCH_TMP at a shared filesystem."""
    root = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir()))
    root.mkdir(parents=True, exist_ok=True)
    return root


# ---- counting SLURM commands -------------------------------------------------------------------------------
class SlurmCalls:
    """Wrapper scripts first on PATH: each logs its name, then execs the real command."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "slurm-shims"
        self.log = folder / "slurm-calls.log"

    def install(self) -> SlurmCalls:
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        for name in SLURM_COMMANDS:
            real = shutil.which(name)
            if real:
                self._shim(name, real)
        os.environ["PATH"] = f"{self.bin}{os.pathsep}{os.environ['PATH']}"
        return self

    def _shim(self, name: str, real: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\necho {name} >> '{self.log}'\nexec '{real}' \"$@\"\n")
        path.chmod(0o755)

    def mark(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        return self.log.read_text().split()

    def since(self, mark: int) -> list[str]:
        return self.names()[mark:]


class TimedCluster(SlurmCluster):
    """The real SlurmCluster; only adds up the seconds spent in `submit` and in `states`."""
    submit_s = 0.0
    states_s = 0.0

    def submit(self, tasks, resources, job_name):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super().submit(tasks, resources, job_name)
        finally:
            self.submit_s += time.perf_counter() - start

    def states(self, job_ids):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super().states(job_ids)
        finally:
            self.states_s += time.perf_counter() - start


def timed_cluster(parts: Parts) -> TimedCluster:
    parts.cluster = TimedCluster(parts.layout.jobs, parts.cfg.cluster)
    return parts.cluster


def real_slurm(args: list[str], timeout_s: float = 60) -> str:
    """A SLURM command the benchmark itself runs (set-up, cancel, polling): never counted."""
    binary = shutil.which(args[0], path=os.defpath + os.pathsep + "/usr/bin:/usr/local/bin")
    try:
        proc = subprocess.run([binary or args[0], *args[1:]], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{' '.join(args[:2])} ...` did not answer in {timeout_s:.0f} s: slurmctld is busy or "
                           "refuses new jobs (sbatch retries silently while MaxJobCount job records exist; "
                           "finished ones are kept MinJobAge seconds)") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}...: {proc.stderr.strip()[:500]}")
    return proc.stdout


def cancel(job_ids: Iterable[str]) -> None:
    masters = sorted({j.split("_")[0] for j in job_ids if j})
    for start in range(0, len(masters), 200):
        real_slurm(["scancel", *masters[start:start + 200]])


def cancel_named(job_name: str) -> None:
    """Cancel, by id, this benchmark's jobs of a unique name (e.g. one an interrupted sbatch left behind)."""
    cancel(real_slurm(["squeue", "-h", "-n", job_name, "-o", "%F"]).split())


def queue_size() -> int:
    return len([line for line in real_slurm(["squeue", "-h", "-r", "-o", "%i"]).splitlines() if line.strip()])


def wait_for_idle_cluster(timeout_s: float = 180.0) -> int:
    """Other people's jobs would take slots from a makespan run: wait for an empty queue, return what is left."""
    deadline = time.monotonic() + timeout_s
    while (left := queue_size()) and time.monotonic() < deadline:
        time.sleep(2.0)
    return left


def sacct_rows(masters: list[str]) -> list[dict[str, str]]:
    text = real_slurm(["sacct", "-X", "-n", "-P", "-o", "JobID,State,Submit,Start,End", "-j", ",".join(masters)])
    keys = ("job_id", "state", "submit", "start", "end")
    return [dict(zip(keys, line.split("|"))) for line in text.splitlines() if line.strip()]


def epoch_s(slurm_time: str) -> float:
    """sacct prints local times with one-second resolution."""
    return datetime.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S").timestamp()


# ---- environments and run directories ----------------------------------------------------------------------
def sleep_env(folder: Path, run: str = "sleep 5", time_min: float = 2.0, quick_check: str = "") -> Path:
    """A user environment whose run is `run` and whose locked eval prints a constant score."""
    code = folder / "code"
    code.mkdir(parents=True)
    (code / "train.sh").write_text("#!/bin/bash\n# the candidate's training script (the env runs `" + run + "`)\n"
                                   "STEPS=10\necho \"training for $STEPS steps\"\n")
    (code / "eval.sh").write_text("#!/bin/bash\necho '{\"score\": 1.0}'\n")
    yaml_text = f"""name: sleeper
description: A benchmark environment whose run only sleeps; the locked eval prints a constant score.
codebase: code
locked: [eval.sh]
hidden: [eval.sh]
run: {run}
eval: bash eval.sh
quick_check: "{quick_check}"
metric: score
direction: maximize
reward: score
metric_range: [0.0, 10.0]
resources: {{gpus: 0, cpus: 1, mem_gb: 1, time_min: {time_min}, eval_time_min: 0.5}}
"""
    (folder / "env.yaml").write_text(yaml_text)
    return folder


def bench_config(env_dir: Path, cluster: ClusterConfig, base_url: str = UNREACHABLE_LLM,
                 implement: ImplementConfig | None = None) -> RunConfig:
    llm = LLMSettings(provider="openai-compatible", model="bench", base_url=base_url, backoff_s=0.01)
    # the benchmarks drop ready candidates into the run directory themselves: they opt in to adopting them
    return RunConfig(env=str(env_dir), llm=LLMConfig(ideator=llm, implementer=llm),
                     implement=implement or ImplementConfig(), cluster=cluster, adopt_external=True)


def open_bench_run(run_dir: Path, cfg: RunConfig) -> Parts:
    return open_run(run_dir, cfg)


def cids(count: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def write_events(layout: RunLayout, events: list[dict[str, Any]]) -> None:
    """Set-up only: many events in one write (the daemon appends them one by one as they happen)."""
    lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
    with layout.events.open("a", encoding="utf-8") as f:
        f.write(lines)


def ready_events(cid: str, t: float) -> list[dict[str, Any]]:
    return [{"kind": "idea", "t": t, "idea_id": cid, "text": f"benchmark idea {cid}", "epoch": 0, "origin": "bench"},
            {"kind": "implement_started", "t": t, "cid": cid},
            {"kind": "implemented", "t": t, "cid": cid, "status": "ready", "reason": "", "diff_lines": 12,
             "cost_usd": 0.0}]


def submitted_event(cid: str, job_id: str, t: float) -> dict[str, Any]:
    return {"kind": "submitted", "t": t, "cid": cid, "job_id": job_id, "attempt": 0, "cluster": "slurm", "gpus": 1}


def write_ready_candidate(layout: RunLayout, cid: str, code_from: Path | None = None) -> None:
    """A candidate as the implementer leaves it: idea.json, implement.json, READY (and code/ if given)."""
    paths = layout.candidate(cid)
    paths.root.mkdir(parents=True, exist_ok=True)
    idea = Idea(idea_id=cid, text=f"benchmark idea {cid}", origin="bench")
    _write_json(paths.idea, to_json(idea))
    _write_json(paths.implement, to_json(ImplementOutcome(cid=cid, status="ready", sample=0, revision=0,
                                                          attempts=1, diff_lines=12, preflight="passed")))
    if code_from is not None:
        shutil.copytree(code_from, paths.code)
    paths.ready.write_text("")


def result_record(cid: str, job_id: str) -> dict[str, Any]:
    """A result.json as the worker writes it (status ok, full provenance)."""
    result = Result(cid=cid, status="ok", metrics={"score": 1.0, "train_s": 5.0}, metric=1.0, reward=1.0,
                    wall_s=5.2, run_s=5.0, eval_s=0.2, job_id=job_id, node="node001", gpu="NVIDIA H100 80GB HBM3",
                    code_sha256=secrets.token_hex(32), locked_sha256={"eval.sh": secrets.token_hex(32)},
                    versions={"python": "3.11.2", "torch": "2.13.0", "toolkit": "0.1.0"})
    return to_json(result)


def write_result(layout: RunLayout, cid: str, job_id: str) -> None:
    _write_json(layout.candidate(cid).result, result_record(cid, job_id))


def _write_json(path: Path, data: Any) -> None:
    """Set-up only: the same bytes as fsio.atomic_write_json, without an fsync per file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def fsync_ms(folder: Path, count: int = 20) -> float:
    """What one append + fsync costs on this filesystem (the event log's unit of durability)."""
    path = folder / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 300 + b"\n")
            os.fsync(fd)
        return (time.perf_counter() - start) * 1000 / count
    finally:
        os.close(fd)
        path.unlink()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"
