"""Per-step checkpoints, written into a staging directory and renamed into place (a reader or a resume sees a
whole checkpoint or none): policy weights (or the LoRA adapter), optimiser state, RNG state, the archive of
executed ideas, the step count and that step's metrics.
"""
from __future__ import annotations

import os
import random
import shutil
from typing import Any

import torch

from toolkit import fsio
from toolkit.rl.layout import CheckpointPaths, RLLayout
from toolkit.rl.policy import save_policy


def rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def save_torch(obj: Any, path: Any) -> None:
    """torch.save to a temporary name, then rename (files other processes read appear whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path: Any) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)   # our own files only


def save_checkpoint(layout: RLLayout, step: int, model: Any, optimizer: torch.optim.Optimizer,
                    archive: list[dict[str, Any]], metrics: dict[str, Any], keep: int) -> CheckpointPaths:
    staging = CheckpointPaths(layout.staging(step, str(os.getpid())))
    shutil.rmtree(staging.root, ignore_errors=True)
    staging.root.mkdir(parents=True)
    save_policy(model, staging.policy)
    torch.save(optimizer.state_dict(), staging.optimizer)
    torch.save(rng_state(), staging.rng)
    fsio.atomic_write_json(staging.archive, archive)
    fsio.atomic_write_json(staging.state, {"step": step, "metrics": metrics})
    final = layout.checkpoint(step)
    shutil.rmtree(final.root, ignore_errors=True)
    staging.root.rename(final.root)
    prune(layout, keep)
    return final


def prune(layout: RLLayout, keep: int) -> None:
    for old in layout.checkpoint_list()[:-keep]:
        shutil.rmtree(old.root, ignore_errors=True)


def clear_staging(layout: RLLayout) -> None:
    """Half-written checkpoints of a crashed trainer (only the lock holder calls this)."""
    for stale in layout.checkpoints.glob(".staging-*") if layout.checkpoints.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(layout: RLLayout) -> CheckpointPaths | None:
    found = layout.checkpoint_list()
    return found[-1] if found else None


def load_training_state(
        ckpt: CheckpointPaths) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(optimizer state dict, RNG state, archive, state.json) of a checkpoint."""
    return load_torch(ckpt.optimizer), load_torch(ckpt.rng), fsio.read_json(ckpt.archive), fsio.read_json(ckpt.state)
