"""The executor daemon of an RL directory: on the login node, it implements, submits and collects the ideas
each step of a SLURM trainer hands over (steps/step-N/execute.json), and says when they all have their
outcome (executed.json). The trainer job waits for that word; it needs no LLM route and submits nothing.

Either side may die at any moment: the daemon resumes a step's run directory from its event log (nothing is
implemented or submitted twice), and a restarted trainer finds its step's ideas already handed over.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

from toolkit import fsio
from toolkit.errors import ToolkitError
from toolkit.loop import execute_ideas
from toolkit.records import Idea, from_json
from toolkit.rl.config import RLConfig
from toolkit.rl.layout import RLLayout


class TrainerGone(ToolkitError):
    """The trainer job ended before its last step."""


def serve_steps(layout: RLLayout, cfg: RLConfig, trainer_state: Callable[[], str], console: Console) -> None:
    """Execute every handed-over step until the trainer has logged its last one. `trainer_state` is the
    trainer job's state: "" while it is queued or running, else how it ended."""
    while not trained(layout, cfg):
        steps = layout.requested_steps()
        if steps:
            execute_step(layout, cfg, steps[0], console)
            continue
        ended = trainer_state()
        if ended:
            raise TrainerGone(f"the trainer job ended ({ended}) before step {cfg.steps}; run the same command "
                              f"again to resume it (see {layout.trainer_jobs})")
        time.sleep(cfg.run.cluster.poll_s)


def execute_step(layout: RLLayout, cfg: RLConfig, n: int, console: Console) -> None:
    """Run the step's ideas through the executor (resumable), then write executed.json once all have ended."""
    paths = layout.step(n)
    ideas = [from_json(Idea, item) for item in fsio.read_json(paths.request)["ideas"]]
    views = execute_ideas(paths.exec_dir, cfg.run, ideas, console=console).candidates
    unfinished = sorted(cid for cid, view in views.items() if not view.terminal)
    if unfinished:
        raise ToolkitError(f"step {n}: stopped before {len(unfinished)} ideas finished; run the same command "
                           f"again to resume the step")
    fsio.atomic_write_json(paths.executed, {"step": n, "ideas": len(ideas), "at": time.time()})
    console.print(f"step {n}: {len(ideas)} ideas executed; the trainer goes on")


def trained(layout: RLLayout, cfg: RLConfig) -> bool:
    return any(row.get("step", 0) >= cfg.steps for row in fsio.read_jsonl(layout.metrics))
