"""The executor as a function: ideas in, one verified result per idea out (used by the CLI and by RL)."""
from __future__ import annotations

import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.live import Live

from toolkit import fsio

from toolkit.report import dashboard
from toolkit.config import RunConfig
from toolkit.execute.pipeline import Daemon
from toolkit.records import Idea
from toolkit.report.progress import PlainProgress
from toolkit.runs import open_run
from toolkit.state import RunState


def execute_ideas(run_dir: Path, cfg: RunConfig, ideas: list[Idea], live: bool = False,
                  console: Console | None = None) -> RunState:
    """Implement, submit and collect every idea; resumable (same run_dir and idea ids -> nothing redone)."""
    parts = open_run(run_dir, cfg)
    lock = fsio.DaemonLock(parts.layout.lock)
    lock.acquire()
    daemon = Daemon(parts)
    try:
        daemon.add_ideas(ideas)
        run_until_done(daemon, console or Console(), live)
    finally:
        daemon.close()
        lock.release()
    return daemon.state


def run_until_done(daemon: Daemon, console: Console, live: bool) -> None:
    stop = {"now": False}
    in_main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True)) if in_main else None
    view = Live(dashboard.execute_view(daemon.state), console=console, auto_refresh=False,
                transient=not console.is_terminal) if live else nullcontext()
    plain = None if console.is_terminal else PlainProgress()   # a batch log: lines, not redraws
    if plain is not None:
        daemon.log.observers.append(plain.on_events)
    try:
        with view as shown:
            while not stop["now"]:
                sleep_s = daemon.tick()
                if shown is not None:
                    shown.update(dashboard.execute_view(daemon.state), refresh=True)
                if plain is not None:
                    plain.tick(daemon.state)
                if daemon.done():
                    return
                time.sleep(sleep_s)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
