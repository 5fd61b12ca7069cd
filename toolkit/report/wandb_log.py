"""Optional Weights & Biases logging of a search while it runs: one row per result, one per ended epoch.

Off by default. `mode: offline` needs no network or account (sync later with `wandb sync DIR`). `wandb` is an
optional dependency (`pip install 'toolkit[wandb]'`), imported only when logging is enabled. The numbers are
the report's own (`toolkit.report.tables.epoch_table` and `diversity` on the event-log view) and the run
summary is the live view's (`toolkit.state`'s baseline reward, best and execution rate), so W&B, `toolkit status`
and `toolkit report` agree.

    logger = make_logger(settings, run_dir, config)      # None when disabled
    ... in the daemon's tick:  logger.update(state)       # logs each new result and each newly ended epoch once
    ... at exit:               logger.finish()
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

from toolkit.config import WandbSettings
from toolkit.errors import ConfigError
from toolkit.report.runs import ideas_only, state_frame
from toolkit.report.tables import diversity, epoch_table
from toolkit.state import BASELINE_ID, CandidateView, RunState


def import_wandb() -> Any:
    try:
        return importlib.import_module("wandb")
    except ImportError as exc:
        raise ConfigError("wandb logging is enabled but the wandb package is not installed: "
                          "pip install 'toolkit[wandb]' (or set wandb.enabled: false)") from exc


def run_id(run_dir: Path) -> str:
    """A stable W&B run id per run directory, so a restarted daemon resumes the same W&B run."""
    return "toolkit-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class WandbLogger:
    def __init__(self, settings: WandbSettings, run_dir: Path, config: dict[str, Any], module: Any = None) -> None:
        wandb = module if module is not None else import_wandb()
        folder = Path(settings.dir) if settings.dir else Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=settings.project, entity=settings.entity or None, mode=settings.mode,
                              dir=str(folder), name=Path(run_dir).name, id=run_id(run_dir), resume="allow",
                              config=config, settings=_quiet_settings(wandb))
        for prefix, step in (("result", "result/index"), ("epoch", "epoch/epoch")):
            self.run.define_metric(step)
            self.run.define_metric(f"{prefix}/*", step_metric=step)
        self.results: set[str] = set()
        self.epochs: set[int] = set()

    def log_result(self, view: CandidateView) -> None:
        """One row per finished candidate (the baseline included), logged once."""
        if not view.status or view.cid in self.results:
            return
        self.results.add(view.cid)
        row = {"result/index": len(self.results), "result/epoch": view.epoch, "result/reward": view.reward,
               "result/metric": view.metric, "result/valid": int(view.valid),
               "result/wall_s": view.wall_s, "result/diff_lines": view.diff_lines}
        self.run.log(_known(row))
        if view.cid == BASELINE_ID and view.valid:
            self.run.summary["baseline_reward"] = view.reward

    def log_epoch(self, state: RunState) -> None:
        """One row per ended epoch, logged once, with the run's spend so far."""

        ended = [e for e in state.search.epochs_ended if e not in self.epochs]
        if not ended:
            return
        frame = state_frame(state)
        epochs, ideas = epoch_table(frame).set_index("epoch"), ideas_only(frame)
        for epoch in ended:
            self.epochs.add(epoch)
            spread = diversity(list(ideas.loc[ideas["epoch"] == epoch, "idea"])).__dict__   # the report's diversity
            stats = {**spread, **(epochs.loc[epoch].to_dict() if epoch in epochs.index else {})}
            row = {"epoch/epoch": epoch, "epoch/llm_usd_so_far": state.llm_spend_usd,
                   "epoch/gpu_hours_so_far": state.gpu_hours, **{f"epoch/{k}": v for k, v in stats.items()}}
            self.run.log(_known(row))
        self.run.summary.update(_known(self._summary(state)))

    def _summary(self, state: RunState) -> dict[str, Any]:
        best = state.best_screened()
        return {"best_reward": best.reward if best else None, "baseline_reward": state.baseline_reward(),
                "execution_rate": state.execution_rate(), "llm_usd": state.llm_spend_usd, "gpu_hours": state.gpu_hours}

    def update(self, state: RunState) -> None:
        """Call from the daemon's tick: logs what is new since the last call."""
        for view in sorted(state.candidates.values(), key=lambda v: (v.finished_at, v.cid)):
            self.log_result(view)
        self.log_epoch(state)

    def finish(self) -> None:
        self.run.finish()


def _quiet_settings(wandb: Any) -> Any:
    """No console capture (it would fight the Rich live view), no git or code snapshot, no system stats."""
    settings_cls = getattr(wandb, "Settings", None)
    if settings_cls is None:
        return None
    return settings_cls(console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True)


def _known(row: dict[str, Any]) -> dict[str, Any]:
    """W&B charts skip missing values better than None; numpy scalars become plain numbers."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
            if v is not None and not (isinstance(v, float) and v != v)}


def make_logger(settings: WandbSettings, run_dir: Path, config: dict[str, Any]) -> WandbLogger | None:
    return WandbLogger(settings, run_dir, config) if settings.enabled else None
