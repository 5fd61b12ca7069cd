"""A crash between sbatch and its event must not submit the array twice: the restarted daemon finds it
by its unique job name and re-attaches."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import copy_env
from toolkit import fsio
from toolkit.config import ClusterConfig, LLMConfig, RunConfig
from toolkit.execute.pipeline import Pipeline
from toolkit.llm.base import LLMSettings
from toolkit.records import Idea, ImplementOutcome, to_json
from toolkit.runs import open_run


def drop_ready(parts, cid: str) -> None:
    paths = parts.layout.candidate(cid)
    shutil.copytree(parts.spec.code_dir, paths.code)
    fsio.atomic_write_json(paths.idea, to_json(Idea(idea_id=cid, text="unchanged code")))
    fsio.atomic_write_json(paths.implement, to_json(ImplementOutcome(cid=cid, status="ready")))
    fsio.atomic_write_text(paths.ready, "")


class Crash(Exception):
    pass


@pytest.mark.slurm
def test_crash_after_sbatch_reattaches(tmp_path: Path, monkeypatch) -> None:
    env = copy_env(tmp_path / "env")
    unused = LLMSettings(provider="openai-compatible", base_url="http://127.0.0.1:9/v1")  # never called
    cfg = RunConfig(env=str(env), cluster=ClusterConfig(cluster="slurm", poll_s=1), adopt_external=True,
                    llm=LLMConfig(ideator=unused, implementer=unused))
    parts = open_run(tmp_path / "run", cfg)
    for cid in ("a", "b"):
        drop_ready(parts, cid)
    daemon = Pipeline(parts)

    def crash(*args, **kwargs):
        raise Crash("killed right after sbatch")

    monkeypatch.setattr(Pipeline, "_record_submitted", crash)
    with pytest.raises(Crash):
        daemon.tick()
    monkeypatch.undo()
    intent = [v.intent for v in daemon.state.candidates.values()]
    assert intent[0] and intent[0] == intent[1]
    restarted = Pipeline(open_run(tmp_path / "run", cfg))
    restarted.tick()
    views = restarted.state.candidates
    assert views["a"].job_id and views["b"].job_id
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-n", intent[0], "-o", "%i"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert sorted(out) == sorted([views["a"].job_id, views["b"].job_id]), "exactly one array, re-attached"
    text = parts.layout.events.read_text()
    assert text.count('"kind": "submitting"') == 1 and text.count('"kind": "submitted"') == 2
