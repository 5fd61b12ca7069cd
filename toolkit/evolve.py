"""`toolkit evolve`: run (or resume) an evolutionary / best-of-N search as a long-lived daemon."""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from toolkit import fsio

from toolkit.report import dashboard
from toolkit.config import SearchRunConfig
from toolkit.search.ideator import Ideator
from toolkit.report.progress import PlainProgress
from toolkit.layout import RunLayout
from toolkit.runs import make_llm, open_run, save_config
from toolkit.search.evolution import SearchDaemon
from toolkit.cluster.serve import start_server, stop_server, use_endpoint, wait_for_endpoint
from toolkit.state import RunState


def run_dir_for(cfg: SearchRunConfig, config_path: Path | None) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser()
    return Path("runs") / (config_path.stem if config_path else "search")


def open_search(run_dir: Path, cfg: SearchRunConfig, adjust: Any = None) -> SearchDaemon:
    parts = open_run(run_dir, cfg, adjust)
    ideator = Ideator(parts.spec, make_llm(parts.cfg.llm.ideator, parts.meter, parts.layout))
    return SearchDaemon(parts, ideator)


def run_search(run_dir: Path, cfg: SearchRunConfig, console: Console, live: bool = True) -> RunState:
    """Hold the run's lock and tick until the search is finished or SIGTERM/SIGINT asks us to stop
    (a requeued SLURM job or a restart resumes from the event log)."""
    layout = RunLayout(run_dir)
    layout.make()
    lock = fsio.DaemonLock(layout.lock)
    lock.acquire()
    try:
        cfg = save_config(layout, cfg)
        daemon = open_search(run_dir, cfg, served_model(cfg, run_dir, console))
        try:
            _loop(daemon, console, live)
        finally:
            daemon.close()
        if daemon.state.meta.get("finished") and cfg.serve_llm.model:
            stop_server(cfg.cluster, run_dir)  # the served model stops with the search
    finally:
        lock.release()
    return daemon.state


def served_model(cfg: SearchRunConfig, run_dir: Path, console: Console) -> Any:
    """Start (or re-use) the configured vLLM server job and point the LLM roles at it."""
    if not cfg.serve_llm.model:
        return None
    job_id = start_server(cfg.serve_llm, cfg.cluster, run_dir)
    url = wait_for_endpoint(cfg.serve_llm, cfg.cluster, run_dir, job_id, console)
    console.print(f"LLM server {cfg.serve_llm.model} answering at {url} (job {job_id})")
    return lambda resolved: use_endpoint(resolved, cfg.serve_llm, url)


def _loop(daemon: SearchDaemon, console: Console, live: bool) -> None:
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    render = lambda: dashboard.search_view(daemon.state, daemon.clock())  # noqa: E731
    plain = None if console.is_terminal else PlainProgress()   # a batch log: lines, not redraws
    if plain is not None:
        daemon.log.observers.append(plain.on_events)
    try:
        # redrawn once per tick (the view only changes then): a timer-driven redraw costs CPU on a login node
        with Live(render(), console=console, transient=False, auto_refresh=False) as shown:
            while not stop["now"]:
                sleep_s = daemon.tick()
                shown.update(render(), refresh=live)
                if plain is not None:
                    plain.tick(daemon.state)
                if daemon.finished():
                    return
                time.sleep(sleep_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
