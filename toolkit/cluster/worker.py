"""What each array task runs: the candidate's `run`, then the locked `eval`, then `result.json`.

The worker is trusted; the candidate's code is not. The `run` executes confined (toolkit.cluster.confine): it may
write only its code dir and scratch, read only the public data, the interpreter and the system, and every
process it leaves behind is found by ancestry and killed. The `eval` executes from the run's pinned
snapshot, never from the candidate's directory, with the hidden data it alone is given; where it needs the
candidate's model it runs it in a confined child (toolkit.cluster.scoring). The snapshot and the data are checked
against the run's pins before each step. The result file lives where no candidate process can write.

The worker always writes a result, whatever happens below it: errors at this boundary become data.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit import fsio, jobenv, pins
from toolkit.cluster import confine
from toolkit.envs import (
    EnvSpec,
    compute_reward,
    data_dirs,
    hash_files,
    is_locked,
    load_env,
    locked_files,
    strip_hidden,
    tree_sha256,
)
from toolkit.layout import CandidatePaths
from toolkit.records import Result, to_json

LOG_TAIL_CHARS = 4000
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class WorkerTask:
    """Everything a task needs; small and picklable (submitit sends it to the node)."""
    cand_dir: str
    env_dir: str                       # the run's environment snapshot (pristine codebase + env.yaml)
    smoke: bool = False
    data_dir: str = ""
    attempt: int = 0
    sandbox: str = "auto"              # the run's `sandbox` setting, resolved on the node
    pins: dict[str, dict[str, str]] | None = None   # the run's pinned snapshot and data (None: not checked)
    seed: int = -1                     # TOOLKIT_SEED for the run (noise floor, re-runs); -1 = the codebase's own
    env_passthrough: tuple[str, ...] = ()   # cluster.env_passthrough: more variables the steps may see
    sandbox_read: tuple[str, ...] = ()      # cluster.sandbox_read: more read-only trees for candidate code


@dataclass(frozen=True)
class StepOutcome:
    returncode: int | None             # None = killed at its time limit
    wall_s: float
    stdout: str = ""
    leftovers: int = 0                 # processes found alive (by ancestry) after the step, all killed
    error: str = ""                    # the launcher could not start or confine the step
    over_budget_s: float = 0.0         # the step finished, but after this budget
    sandbox: str = ""                  # the confinement the launcher applied (e.g. landlock-abi7+userns)


class WorkerRun:
    """One execution of one candidate. `__call__` is what submitit pickles and runs."""

    def __call__(self, task: WorkerTask) -> dict[str, Any]:
        paths = CandidatePaths(Path(task.cand_dir))
        _exit_on_term()
        confine.harden_trusted()
        try:
            result = execute(task, paths)
        except SlurmTimeLimit:
            result = Result(cid=paths.cid, status="timeout", reason="SLURM time limit reached before run + eval "
                            "finished", log_tail=_tail(paths.worker_log))
        except Exception:  # the outermost frame of a job: must survive and report
            result = Result(cid=paths.cid, status="failed", reason="worker error: " + traceback.format_exc()[-1500:])
        result = replace(result, wall_s=result.run_s + result.eval_s, **_provenance(task, paths))
        fsio.atomic_write_json(_result_path(paths, result), to_json(result))
        return to_json(result)


def _result_path(paths: CandidatePaths, result: Result) -> Path:
    """The first result stands; a second run of the same candidate (a duplicate job) is kept beside it."""
    if paths.result.exists():
        return paths.root / f"result.dup-{result.job_id}-{int(time.time())}.json"
    return paths.result


class Terminated(BaseException):
    """SLURM is stopping this task (scancel, preemption, time limit): no verdict is written, the daemon
    decides from SLURM's state (a requeued task simply runs again)."""


class SlurmTimeLimit(Exception):
    """USR2: submitit's warning that the SLURM time limit is near (`--signal=USR2@delay`)."""


def _exit_on_term() -> None:
    """TERM (scancel, preemption) ends the task without a verdict; USR2 (the time-limit warning, replacing
    submitit's handler, which would call a plain function's time-out an error) gives a `timeout` verdict."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_term)
        signal.signal(signal.SIGUSR2, _on_time_limit)


def _stop_running() -> None:
    """TERM first: the confinement launcher answers it by killing its whole tree (found by ancestry)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(_RUNNING):
            with contextlib.suppress(OSError):
                os.killpg(pid, sig)
        if sig == signal.SIGTERM and _RUNNING:
            time.sleep(1.0)


def _on_term(signum: int, frame: Any) -> None:
    _stop_running()
    raise Terminated(f"signal {signum}")


def _on_time_limit(signum: int, frame: Any) -> None:
    _stop_running()
    raise SlurmTimeLimit("the SLURM time limit is near")


_RUNNING: set[int] = set()


def run_task(task: WorkerTask) -> dict[str, Any]:
    return WorkerRun()(task)


def execute(task: WorkerTask, paths: CandidatePaths) -> Result:
    spec = load_env(task.env_dir, smoke=task.smoke)
    every_locked = locked_files(spec.code_dir, spec.locked)
    locked = [f for f in every_locked if not is_locked(f, spec.hidden)]   # hidden ones never reach the copy
    pristine = hash_files(spec.code_dir, every_locked)
    try:
        mechanism = confine.resolve(task.sandbox)
    except confine.ConfineError as exc:
        return Result(cid=paths.cid, status="failed", reason=str(exc))
    problem = _pin_problem(task, spec, ("snapshot", "data", "hidden"))
    if problem:
        return _alarm(paths, problem, pristine)
    strip_hidden(paths.code, spec.hidden)
    changed = _changed(pristine, hash_files(paths.code, locked))
    if changed:
        return _invalid(paths, f"locked file(s) differ from the pristine copy before the run: {changed}", pristine)
    env = _step_env(spec, task, paths)
    run = run_confined(spec, task, paths, _seeded(env, task.seed), mechanism)
    return replace(_after_run(spec, task, paths, env, run, pristine, locked, mechanism), sandbox=run.sandbox)


def _after_run(spec: EnvSpec, task: WorkerTask, paths: CandidatePaths, env: dict[str, str], run: StepOutcome,
               pristine: dict[str, str], locked: list[str], mechanism: str) -> Result:
    base = Result(cid=paths.cid, status="failed", run_s=run.wall_s, locked_sha256=pristine)
    if run.error:
        return replace(base, reason=f"the sandbox could not start the run: {run.error}")
    if run.returncode is None:
        return replace(base, status="timeout", reason=f"run exceeded its time limit of {spec.resources.time_min} min",
                       log_tail=_tail(paths.worker_log))
    changed = _changed(pristine, hash_files(paths.code, locked))
    if changed:
        return replace(base, status="invalid", reason=f"locked file(s) modified at run time: {changed}",
                       log_tail=_tail(paths.worker_log))
    if run.leftovers:
        return replace(base, status="invalid", reason=f"the run left {run.leftovers} process(es) running "
                       "in the background (killed)", log_tail=_tail(paths.worker_log))
    if run.returncode != 0:
        return replace(base, reason=f"run exited with code {run.returncode}", log_tail=_tail(paths.worker_log))
    budget_s = spec.resources.run_budget_s
    if budget_s and run.wall_s > budget_s:
        return replace(base, status="invalid", reason=f"the run took {run.wall_s:.0f} s, over the environment's "
                       f"run_budget_s of {budget_s:g} s: a better score may not be bought with more time",
                       log_tail=_tail(paths.worker_log))
    problem = _pin_problem(task, spec, ("snapshot", "hidden"))
    if problem:
        return _alarm(paths, problem, pristine)
    ev = run_scorer(spec, task, paths, _seeded(env, -1), mechanism)
    return replace(judge(spec, ev, paths), run_s=run.wall_s, eval_s=ev.wall_s, locked_sha256=pristine)


def run_confined(spec: EnvSpec, task: WorkerTask, paths: CandidatePaths, env: dict[str, str],
                 mechanism: str) -> StepOutcome:
    """The candidate's `run`, confined: its code dir and scratch writable, the public data readable."""
    public, _ = data_dirs(task.data_dir, spec.name)
    read = [str(public), *confine.existing_paths(task.sandbox_read)]
    policy = confine.candidate_policy(paths.code, paths.scratch, read, mechanism, network=spec.network,
                                      timeout_s=spec.resources.time_min * 60)
    return run_launched(policy, ["bash", "-c", spec.run], paths.code, confine.confined_environ(env, paths.scratch),
                        paths, "run")


def run_scorer(spec: EnvSpec, task: WorkerTask, paths: CandidatePaths, env: dict[str, str],
               mechanism: str) -> StepOutcome:
    """The locked `eval`, from the pinned snapshot: trusted code, never the candidate's copy of it. It runs
    under the launcher too (no confinement: it must read the hidden data), so its leftovers are reaped."""
    _, hidden = data_dirs(task.data_dir, spec.name)
    snapshot = str(spec.code_dir)
    scorer_env = {**env, "TOOLKIT_CODE_DIR": str(paths.code), "TOOLKIT_HIDDEN_DIR": str(hidden),
                  "TOOLKIT_SANDBOX": mechanism, "PYTHONPATH": snapshot, "PYTHONSAFEPATH": "1",
                  "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    policy = confine.Policy(mechanism="none", timeout_s=spec.resources.eval_time_min * 60)
    ev = run_launched(policy, ["bash", "-c", spec.eval], spec.code_dir, scorer_env, paths, "eval", capture=True)
    budget_s = spec.resources.eval_budget_s
    if ev.returncode is not None and budget_s and ev.wall_s > budget_s:
        return replace(ev, over_budget_s=budget_s)
    return ev


def run_launched(policy: confine.Policy, argv: list[str], cwd: Path, env: dict[str, str], paths: CandidatePaths,
                 label: str, capture: bool = False) -> StepOutcome:
    """Run argv through the confinement launcher (a subreaper that reaps by ancestry); its report is kept in
    a control dir beside the result, out of the candidate's reach."""
    launch = confine.launch_argv(policy, argv, paths.root / "control" / label)
    step = run_step(launch.argv, cwd, env, policy.timeout_s + KILL_GRACE_S + 30, paths.worker_log,
                    f"{label}: {argv[-1]}", capture=capture)
    report = confine.read_report(launch.report)
    code = None if report.returncode is None or step.returncode is None else report.returncode
    return replace(step, returncode=code, leftovers=report.leftovers, error=report.error, sandbox=report.mechanism)


def _pin_problem(task: WorkerTask, spec: EnvSpec, trees: tuple[str, ...]) -> str:
    if task.pins is None:
        return ""
    public, hidden = data_dirs(task.data_dir, spec.name)
    where = {"snapshot": Path(task.env_dir), "data": public, "hidden": hidden}
    changed = pins.verify(task.pins, {t: where[t] for t in trees})
    return f"pinned inputs changed since the run started: {', '.join(changed[:10])}" if changed else ""


def _alarm(paths: CandidatePaths, problem: str, pristine: dict[str, str]) -> Result:
    return Result(cid=paths.cid, status="invalid", reason=problem, alarm=problem, locked_sha256=pristine)


def judge(spec: EnvSpec, ev: StepOutcome, paths: CandidatePaths) -> Result:
    """Turn the locked eval's output into a result: metrics from its last stdout line, never from free text."""
    fail = Result(cid=paths.cid, status="failed", log_tail=_tail(paths.worker_log))
    if ev.returncode is None:
        return replace(fail, status="timeout", reason=f"eval exceeded {spec.resources.eval_time_min} min")
    if ev.over_budget_s:
        return replace(fail, status="invalid", reason=f"the eval took {ev.wall_s:.0f} s, over the environment's "
                       f"eval_budget_s of {ev.over_budget_s:g} s: time may not be bought in the eval either")
    if ev.leftovers:
        return replace(fail, status="invalid", reason=f"the eval left {ev.leftovers} process(es) running (killed)")
    if ev.returncode != 0:
        return replace(fail, reason=f"eval exited with code {ev.returncode}")
    metrics = parse_metrics(ev.stdout)
    if metrics is None:
        return replace(fail, reason="eval's last stdout line is not a JSON object of metrics")
    return score(spec, metrics, fail)


def score(spec: EnvSpec, metrics: dict[str, Any], base: Result) -> Result:
    if "invalid" in metrics:
        return replace(base, status="invalid", reason=f"eval: {metrics['invalid']}", metrics=metrics)
    value = metrics.get(spec.metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return replace(base, status="invalid", metrics=metrics,
                       reason=f"metric {spec.metric!r} missing or not a finite number")
    low, high = spec.metric_range
    if not low <= value <= high:
        return replace(base, status="invalid", metrics=metrics, metric=value,
                       reason=f"implausible {spec.metric}={value} outside [{low}, {high}]")
    try:
        reward = compute_reward(spec.reward, metrics)
    except (ArithmeticError, KeyError, ValueError, TypeError) as exc:
        return replace(base, status="invalid", metrics=metrics, metric=value, reason=f"reward {spec.reward!r}: {exc!r}")
    return replace(base, status="ok", metrics=metrics, metric=float(value), reward=reward, log_tail="")


def parse_metrics(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        return None
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def run_step(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float, log: Path, label: str,
             capture: bool = False) -> StepOutcome:
    """Run argv in its own session; on timeout kill the whole group. Output goes to `log`."""
    start = time.monotonic()
    with log.open("a") as log_f:
        log_f.write(f"\n===== {label} =====\n")
        log_f.flush()
        out = subprocess.PIPE if capture else log_f
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=log_f,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        _RUNNING.add(proc.pid)
        try:
            stdout, code = _wait(proc, timeout_s)
        finally:
            _RUNNING.discard(proc.pid)
        if capture:
            log_f.write(stdout)
    return StepOutcome(returncode=code, wall_s=time.monotonic() - start, stdout=stdout)


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[str, int | None]:
    try:
        if proc.stdout is None:  # output goes to the log file: nothing to drain, wait on the process itself
            wait_exit(proc, timeout_s)
            return "", proc.returncode
        stdout, _ = proc.communicate(timeout=timeout_s)
        return stdout or "", proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, _ = proc.communicate()
        return stdout or "", None


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> None:
    """`proc.wait(timeout)` polls up to 20 times a second for the whole run (a 25-min run: 30,000 wake-ups
    of a Python loop); a pidfd lets the worker sleep in select() until the exit. Raises TimeoutExpired."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # Python < 3.9 or a kernel < 5.3
        proc.wait(timeout=timeout_s)
        return
    try:
        if not select.select([fd], [], [], timeout_s)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
    finally:
        os.close(fd)
    proc.wait()


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(KILL_GRACE_S if sig == signal.SIGTERM else 0)


def _step_env(spec: EnvSpec, task: WorkerTask, paths: CandidatePaths) -> dict[str, str]:
    env = jobenv.job_environ(extra_allow=task.env_passthrough)
    env.update({k: str(v) for k, v in spec.env_vars.items()})
    paths.scratch.mkdir(parents=True, exist_ok=True)
    env.update(TOOLKIT_DATA_DIR=str(data_dirs(task.data_dir, spec.name)[0]), TOOLKIT_SCRATCH=str(paths.scratch),
               PYTHONUNBUFFERED="1")
    if task.smoke:
        env["TOOLKIT_SMOKE"] = "1"
    return env


def _seeded(env: dict[str, str], seed: int) -> dict[str, str]:
    """The run (never the eval, which stays deterministic) gets TOOLKIT_SEED when the task has one; a stray
    one from the submitting shell never reaches a screening run."""
    unseeded = {k: v for k, v in env.items() if k != "TOOLKIT_SEED"}
    return {**unseeded, "TOOLKIT_SEED": str(seed)} if seed >= 0 else unseeded


def _invalid(paths: CandidatePaths, reason: str, pristine: dict[str, str]) -> Result:
    return Result(cid=paths.cid, status="invalid", reason=reason, locked_sha256=pristine)


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in after if before.get(p) != after[p])


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


def _provenance(task: WorkerTask, paths: CandidatePaths) -> dict[str, Any]:
    return dict(job_id=current_job_id(), node=socket.gethostname(), gpu=gpu_name(), attempt=task.attempt,
                code_sha256=tree_sha256(paths.code) if paths.code.is_dir() else "", finished_at=time.time(),
                versions=_versions())


def current_job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")


def gpu_name() -> str:
    if not shutil.which("nvidia-smi") or not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "none"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    names = sorted(set(line.strip() for line in out.splitlines() if line.strip()))
    return ",".join(names) or "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for pkg, dist in (("torch", "torch"), ("toolkit", "execution-grounded-toolkit")):
        with contextlib.suppress(PackageNotFoundError):
            found[pkg] = version(dist)
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m toolkit.cluster.worker TASK.json`: run one task by hand (debugging a candidate)."""
    args = argv if argv is not None else sys.argv[1:]
    task = WorkerTask(**json.loads(Path(args[0]).read_text()))
    print(json.dumps(run_task(task), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
