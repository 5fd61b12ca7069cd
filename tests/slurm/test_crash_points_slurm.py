"""The daemon dies at several points of a tick (right after each kind of state write) and restarts:
nothing is submitted twice, no result is lost, and the search ends where an uninterrupted one does."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from helpers import copy_env
from search_helpers import toy_search_responder
from toolkit.config import SearchRunConfig, from_dict
from toolkit.loop import run_search
from toolkit.state import EventLog
from toolkit.testing.fake_llm import FakeLLMServer

# certification on: the noise floor's replicas, a round planned after epoch 0, and its first verdict
POINTS = [("submitting", 1), ("submitted", 2), ("result", 3), ("epoch_started", 2), ("implemented", 4),
          ("replicas_planned", 2), ("verdict", 1)]


class Crash(BaseException):
    pass


def config(env: Path, base_url: str) -> SearchRunConfig:
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": base_url + "/v1", "backoff_s": 0.01}
    return from_dict(SearchRunConfig, {
        "env": str(env), "llm": {"ideator": llm, "implementer": llm},
        "implement": {"samples": 1, "revisions": 1, "workers": 3},
        "cluster": {"cluster": "slurm", "partition": "debug", "poll_s": 0.5, "lost_grace_s": 20},
        "search": {"epochs": 2, "ideas_per_epoch": 3, "ideas_per_call": 3, "dedup": {"method": "off"},
                   "certify": {"noise_floor_seeds": 2, "top_k": 2, "seeds": 2, "baseline_seeds": 2,
                               "budget_share": 0.9}}}, "test")


def view(state) -> dict:
    runs = {cid: (v.idea, v.epoch, v.status, None if v.metric is None else round(v.metric, 6), v.verdict)
            for cid, v in state.candidates.items()}
    return {**runs, "replicas": sorted((v.parent, v.seed, v.status) for v in state.replicas.values())}


@pytest.mark.slurm
@pytest.mark.slow
def test_crash_at_each_point_of_a_tick(tmp_path: Path, monkeypatch) -> None:
    env = copy_env(tmp_path / "env")
    real_emit = EventLog.emit_many
    with FakeLLMServer(toy_search_responder()) as server:
        cfg = config(env, server.base_url)
        calm = view(run_search(tmp_path / "calm", cfg, Console(record=True), live=False))
        assert any(verdict for *_, verdict in list(calm.values())[:-1]) and calm["replicas"]   # it certified
        for kind, nth in POINTS:
            seen = Counter()

            def emit(self, k, items, kind=kind, nth=nth, seen=seen):   # bound now: this iteration's crash point
                real_emit(self, k, items)           # the write happened; the process dies right after it
                before, seen[k] = seen[k], seen[k] + len(items)
                if k == kind and before < nth <= seen[k]:
                    raise Crash(f"killed after {kind} #{nth}")

            run = tmp_path / f"crash-{kind}"
            monkeypatch.setattr(EventLog, "emit_many", emit)
            with pytest.raises(Crash):
                run_search(run, cfg, Console(record=True), live=False)
            monkeypatch.setattr(EventLog, "emit_many", real_emit)
            state = run_search(run, cfg, Console(record=True), live=False)
            events = (run / "state" / "events.jsonl").read_text().splitlines()
            first = Counter(e for e in events if '"kind": "submitted"' in e and '"attempt": 0' in e)
            cids = Counter(line.split('"cid": "')[1].split('"')[0] for line in first)
            assert cids and max(cids.values()) == 1, (kind, cids)
            results = Counter(line.split('"cid": "')[1].split('"')[0] for line in events if '"kind": "result"' in line)
            assert set(results) == set(cids) and max(results.values()) == 1, (kind, results)
            assert view(state) == calm, kind
