"""The one daemon loop of `toolkit execute`, `toolkit evolve` and RL: composed stages, ticked in order.

A stage is anything with `tick() -> seconds until it wants to run again` and `close()`: the execute pipeline,
the search (which feeds the pipeline), W&B logging. The loop sleeps until the earliest stage is due, or until
the pipeline's `wake` event says that an implementation or an ideation call finished. This module alone owns
the run's lock, SIGTERM, the live view, the plain progress lines of a batch log and the final sync.

    execute_ideas(run_dir, cfg, ideas)           # ideas in, one verified result per idea out (CLI and RL)
    run_search(run_dir, cfg, console)            # `toolkit evolve`: run or resume a search
"""
from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console, RenderableType
from rich.live import Live

from toolkit import fsio
from toolkit.cluster.serve import start_server, stop_server, use_endpoint, wait_for_endpoint
from toolkit.config import RunConfig, SearchRunConfig, to_dict
from toolkit.execute.pipeline import Pipeline
from toolkit.layout import RunLayout
from toolkit.records import Idea
from toolkit.report import dashboard
from toolkit.report.progress import PlainProgress
from toolkit.report.wandb_log import WandbLogger, make_logger
from toolkit.runs import make_llm, open_run, save_config
from toolkit.search.evolution import Search
from toolkit.search.ideator import Ideator
from toolkit.state import RunState

log = logging.getLogger(__name__)


class Stage(Protocol):
    def tick(self) -> float: ...

    def close(self) -> None: ...


@dataclass
class Loop:
    """The pipeline first (it harvests, submits and collects), then the stages that read what it recorded."""
    pipeline: Pipeline
    stages: list[Stage]
    finished: Callable[[], bool]     # the loop's goal: every idea done (execute), or the search finished
    render: Callable[[], RenderableType]

    @property
    def state(self) -> RunState:
        return self.pipeline.state

    def tick(self) -> float:
        """One pass over every stage, then what they wrote made durable; the seconds until the earliest is due."""
        due_s = min([self.pipeline.tick(), *(stage.tick() for stage in self.stages)])
        self.pipeline.log.sync()    # the stages after the pipeline write too (a no-op when nothing is new)
        return due_s

    def sleep(self, seconds: float) -> None:
        """Sleep until due, or until a finished implementation or ideation call wakes the loop."""
        self.pipeline.wake.wait(seconds)
        self.pipeline.wake.clear()

    def close(self) -> None:
        for stage in reversed(self.stages):
            stage.close()
        self.pipeline.close()
        self.pipeline.log.sync()


@dataclass
class WandbStage:
    """W&B logging as a stage: one row per new result and ended epoch; its trouble never stops a search."""
    logger: WandbLogger
    state: Callable[[], RunState]

    def tick(self) -> float:
        try:
            self.logger.update(self.state())
        except Exception as exc:
            log.warning("wandb logging failed: %r", exc)
        return math.inf

    def close(self) -> None:
        self.logger.finish()


def run(loop: Loop, console: Console, live: bool) -> None:
    """Tick until the loop's goal is met or SIGTERM asks us to stop (a requeued job or a restart resumes from
    the event log). A terminal gets the live view, a batch log plain progress lines."""
    stop = {"now": False}
    in_main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True)) if in_main else None
    plain = None if console.is_terminal else PlainProgress()
    if plain is not None:
        loop.pipeline.log.observers.append(plain.on_events)
    # redrawn once per tick (the view only changes then): a timer-driven redraw costs CPU on a login node; a
    # batch log gets the last frame once, at exit
    try:
        with Live(loop.render(), console=console, auto_refresh=False) as shown:
            while not stop["now"]:
                sleep_s = loop.tick()
                shown.update(loop.render(), refresh=live)
                if plain is not None:
                    plain.tick(loop.state)
                if loop.finished():
                    return
                loop.sleep(sleep_s)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# ---- `toolkit execute` ---------------------------------------------------------------------------------------
def execute_ideas(run_dir: Path, cfg: RunConfig, ideas: list[Idea], live: bool = False,
                  console: Console | None = None) -> RunState:
    """Implement, submit and collect every idea; resumable (same run_dir and idea ids -> nothing redone)."""
    parts = open_run(run_dir, cfg)
    lock = fsio.DaemonLock(parts.layout.lock)
    lock.acquire()
    pipeline = Pipeline(parts)
    loop = Loop(pipeline, [], pipeline.done, lambda: dashboard.execute_view(pipeline.state))
    try:
        pipeline.add_ideas(ideas)
        run(loop, console or Console(), live)
    finally:
        loop.close()
        lock.release()
    return pipeline.state


# ---- `toolkit evolve` ----------------------------------------------------------------------------------------
def run_dir_for(cfg: SearchRunConfig, config_path: Path | None) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser()
    return Path("runs") / (config_path.stem if config_path else "search")


def open_search(run_dir: Path, cfg: SearchRunConfig, adjust: Any = None) -> Loop:
    """The search's loop: the pipeline, the search stage that feeds it, and W&B when enabled."""
    parts = open_run(run_dir, cfg, adjust)
    pipeline = Pipeline(parts)
    search = Search(pipeline, Ideator(parts.spec, make_llm(parts.cfg.llm.ideator, parts.meter, parts.layout)))
    stages: list[Stage] = [search]
    logger = make_logger(cfg.wandb, parts.layout.root, to_dict(parts.cfg))
    if logger is not None:
        stages.append(WandbStage(logger, lambda: pipeline.state))
    return Loop(pipeline, stages, search.finished, lambda: dashboard.search_view(pipeline.state, pipeline.clock()))


def run_search(run_dir: Path, cfg: SearchRunConfig, console: Console, live: bool = True) -> RunState:
    """Hold the run's lock and run the search's loop (a restart resumes it from the event log)."""
    layout = RunLayout(run_dir)
    layout.make()
    lock = fsio.DaemonLock(layout.lock)
    lock.acquire()
    try:
        cfg = save_config(layout, cfg)
        loop = open_search(run_dir, cfg, served_model(cfg, run_dir, console))
        try:
            run(loop, console, live)
        finally:
            loop.close()
        if loop.state.search.finished and cfg.serve_llm.model:
            stop_server(cfg.cluster, run_dir)  # the served model stops with the search
    finally:
        lock.release()
    return loop.state


def served_model(cfg: SearchRunConfig, run_dir: Path, console: Console) -> Any:
    """Start (or re-use) the configured vLLM server job and point the LLM roles at it."""
    if not cfg.serve_llm.model:
        return None
    job_id = start_server(cfg.serve_llm, cfg.cluster, run_dir)
    url = wait_for_endpoint(cfg.serve_llm, cfg.cluster, run_dir, job_id, console)
    console.print(f"LLM server {cfg.serve_llm.model} answering at {url} (job {job_id})")
    return lambda resolved: use_endpoint(resolved, cfg.serve_llm, url)
