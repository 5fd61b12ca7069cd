"""`toolkit evolve`: run (or resume) an evolutionary / best-of-N search as a long-lived daemon."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from toolkit import dashboard, fsio
from toolkit.config import SearchRunConfig
from toolkit.ideator import Ideator
from toolkit.runs import make_llm, open_run
from toolkit.search import SearchDaemon
from toolkit.state import RunState


def run_dir_for(cfg: SearchRunConfig, config_path: Path | None) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser()
    return Path("runs") / (config_path.stem if config_path else "search")


def open_search(run_dir: Path, cfg: SearchRunConfig) -> SearchDaemon:
    parts = open_run(run_dir, cfg)
    ideator = Ideator(parts.spec, make_llm(parts.cfg.llm.ideator, parts.meter, parts.layout))
    return SearchDaemon(parts, ideator)


def run_search(run_dir: Path, cfg: SearchRunConfig, console: Console, live: bool = True) -> RunState:
    """Hold the run's lock and tick until the search is finished or SIGTERM/SIGINT asks us to stop
    (a requeued SLURM job or a restart resumes from the event log)."""
    lock = fsio.DaemonLock(run_dir / "daemon.lock")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    daemon = open_search(run_dir, cfg)
    try:
        _loop(daemon, console, live)
    finally:
        daemon.close()
        lock.release()
    return daemon.state


def _loop(daemon: SearchDaemon, console: Console, live: bool) -> None:
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    render = lambda: dashboard.search_view(daemon.state, daemon.clock())  # noqa: E731
    try:
        with Live(render(), console=console, refresh_per_second=2, transient=False, auto_refresh=live) as shown:
            while not stop["now"]:
                sleep_s = daemon.tick()
                shown.update(render(), refresh=True)
                if daemon.finished():
                    return
                time.sleep(sleep_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
