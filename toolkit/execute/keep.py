"""The keep policy for a run's large outputs (config `disk`): which finished runs keep their checkpoints.

A failed, timed-out, invalid or lost run keeps nothing large, nor does a re-run (noise floor, certification:
its verdict is recorded, and a later re-run rebuilds its code from the snapshot and patch.diff); an ok
candidate keeps its outputs while it is among the `keep_top_k` best by reward. Each run is pruned once, by
the daemon, after its result is recorded: first removed (toolkit/disk.py), then a `pruned` event says what
went, so a restart finishes what a crash cut short and never prunes a run twice.
"""
from __future__ import annotations

from typing import Any

from toolkit import disk
from toolkit.config import DiskConfig
from toolkit.layout import RunLayout
from toolkit.state import RunState

FILES_RECORDED = 20                    # names of removed files kept in a `pruned` event


def kept(state: RunState, keep_top_k: int) -> set[str]:
    """The ok candidates that keep their outputs: the best `keep_top_k` by reward (ties by id)."""
    ok = [v for v in state.candidates.values() if v.status == "ok" and v.reward is not None]
    best = sorted(ok, key=lambda v: (-float(v.reward), v.cid))   # type: ignore[arg-type]
    return {v.cid for v in best[:keep_top_k]}


def to_prune(state: RunState, cfg: DiskConfig) -> list[str]:
    """Finished runs, not yet pruned, that the policy no longer keeps."""
    if not cfg.prune:
        return []
    keep = kept(state, cfg.keep_top_k)
    return [v.cid for v in state.runs() if v.status and v.pruned_bytes is None and v.cid not in keep]


def prune_run(layout: RunLayout, cid: str, cfg: DiskConfig) -> dict[str, Any]:
    """Remove one run's large outputs; the `pruned` event that records it."""
    done = disk.prune_outputs(layout.candidate(cid), int(cfg.large_file_mb * disk.MB))
    return {"cid": cid, "bytes": done.bytes, "files": list(done.files[:FILES_RECORDED]),
            "files_removed": len(done.files)}
