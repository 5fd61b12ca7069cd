"""The search daemon: epoch plans, exploit/explore splits, resume, budgets (toy env, local/debug cluster)."""
from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from helpers import copy_env
from search_helpers import toy_search_responder
from toolkit.config import SearchConfig, SearchRunConfig, from_dict
from toolkit.loop import run_search
from toolkit.search.policy import epoch_calls, split
from toolkit.testing.fake_llm import FakeLLMServer


@pytest.mark.parametrize("n, expected", [
    (50, [(0, 50), (20, 30), (30, 20), (30, 20), (30, 20), (30, 20), (40, 10), (40, 10), (40, 10), (40, 10)]),
    (80, [(0, 80), (40, 40), (40, 40), (40, 40), (50, 30), (50, 30), (60, 20), (60, 20), (60, 20), (60, 20)]),
])
def test_exploit_explore_split(n: int, expected: list) -> None:
    cfg = SearchConfig(ideas_per_epoch=n)
    assert [split(cfg, e, True) for e in range(10)] == expected
    assert split(cfg, 3, have_exemplars=False) == (0, n)
    assert split(SearchConfig(ideas_per_epoch=n, strategy="best_of_n"), 3, True) == (0, n)
    calls = epoch_calls(cfg, 1, True)
    assert all(c.count <= 10 for c in calls) and sum(c.count for c in calls) == n


def search_config(tmp_path: Path, base_url: str, cluster: str = "local", **search) -> SearchRunConfig:
    """Certification and duplicate detection off unless asked for (test_certify.py and test_dedup.py test
    them): these tests count submissions, and the toy ideas repeat their learning rates on purpose."""
    search = {"certify": {"enabled": False}, "dedup": {"method": "off"}, **search}
    env = copy_env(tmp_path / "env")
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": base_url + "/v1", "backoff_s": 0.01}
    return from_dict(SearchRunConfig, {
        "env": str(env), "llm": {"ideator": llm, "implementer": llm},
        "implement": {"samples": 2, "revisions": 1, "workers": 4},
        "cluster": {"cluster": cluster, "poll_s": 0.5, "lost_grace_s": 10},
        "search": {"epochs": 3, "ideas_per_epoch": 4, "ideas_per_call": 2, **search}}, "test")


@pytest.mark.slow
def test_search_three_epochs_local(tmp_path: Path) -> None:
    with FakeLLMServer(toy_search_responder()) as server:
        cfg = search_config(tmp_path, server.base_url)
        state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    assert state.search.finished and state.search.epochs_ended == [0, 1, 2]
    ideas = [v for v in state.candidates.values() if v.cid != "baseline"]
    assert len(ideas) == 12 and sorted({v.epoch for v in ideas}) == [0, 1, 2]
    assert state.candidates["baseline"].status == "ok"
    assert all(v.terminal for v in ideas)
    origins = {v.origin for v in ideas if v.epoch >= 1}
    assert "exploit" in origins and "explore" in origins
    events = (tmp_path / "run" / "state" / "events.jsonl").read_text()
    assert events.count('"kind": "submitted"') == 13  # 12 ideas + baseline, each exactly once
    calls = sorted((tmp_path / "run" / "ideas" / "calls").glob("*.prompt.md"))   # every ideation call kept
    assert len(calls) == 6 and all(c.with_name(c.name.replace(".prompt.", ".response.")).exists() for c in calls)
    assert "Reply with ONLY a JSON array" in calls[0].read_text()


def test_budget_stops_new_work(tmp_path: Path) -> None:
    with FakeLLMServer(toy_search_responder()) as server:
        data = _as_dict(search_config(tmp_path, server.base_url, cluster="debug"))
        data["budget"] = {"llm_usd": 1e-9}
        data["llm"]["ideator"]["price_input_per_mtok"] = 1.0
        cfg = from_dict(SearchRunConfig, data, "t")
        state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    assert state.search.stopping.startswith("LLM spend cap")
    assert state.search.finished
    assert len([v for v in state.candidates.values() if v.cid != "baseline"]) <= 2


def _as_dict(cfg):
    import dataclasses
    data = dataclasses.asdict(cfg)
    data["metric_range"] = None
    del data["metric_range"]
    return data


def test_gpu_hours_cap_stops_new_work(tmp_path: Path) -> None:
    import yaml

    with FakeLLMServer(toy_search_responder()) as server:
        data = _as_dict(search_config(tmp_path, server.base_url, cluster="debug"))
        env_yaml = Path(data["env"]) / "env.yaml"
        spec = yaml.safe_load(env_yaml.read_text())
        spec["resources"]["gpus"] = 1          # the debug cluster ignores GPUs; the accounting does not
        env_yaml.write_text(yaml.safe_dump(spec))
        data["budget"] = {"gpu_hours": 1e-7}
        state = run_search(tmp_path / "run", from_dict(SearchRunConfig, data, "t"), Console(record=True), live=False)
    assert state.search.stopping.startswith("GPU-hours cap")
    assert state.gpu_hours > 1e-7 and state.search.finished
    submitted = [v for v in state.candidates.values() if v.job_id]
    assert len(submitted) < 13 and all(v.status for v in submitted)   # what ran finished; nothing new started


def test_second_daemon_is_refused(tmp_path: Path) -> None:
    from toolkit.errors import LockHeldError
    from toolkit.fsio import DaemonLock

    first = DaemonLock(tmp_path / "daemon.lock")
    first.acquire()
    with pytest.raises(LockHeldError, match="another daemon"):
        DaemonLock(tmp_path / "daemon.lock").acquire()
    first.release()
    (tmp_path / "daemon.lock").write_text("999999999@" + __import__("socket").gethostname())  # a dead pid
    DaemonLock(tmp_path / "daemon.lock").acquire()   # a stale lock is taken over


def test_real_llm_replaces_replay_when_a_key_is_set() -> None:
    from toolkit.runs import prefer_real_llm

    cfg = from_dict(SearchRunConfig, {"use_real_llm_if_key": True,
                                      "llm": {"ideator": {"provider": "replay", "replay_file": "x"}}}, "t")
    assert prefer_real_llm(cfg, {}).llm.ideator.provider == "replay"
    real = prefer_real_llm(cfg, {"ANTHROPIC_API_KEY": "k"})
    assert real.llm.ideator.provider == "anthropic" and real.llm.implementer.provider == "anthropic"
    assert real.llm.ideator.replay_file == ""


def reworded(respond):
    """The toy ideator's ideas with titles an LLM would write and the wording varied, as a re-proposal is."""
    import json
    import re

    from toolkit.testing.fake_llm import FakeReply

    def wrapped(request: dict) -> FakeReply:
        reply = respond(request)
        if not reply.text.startswith("["):
            return reply
        ideas = json.loads(reply.text)
        for i, idea in enumerate(ideas):
            lr = re.search(r"LR to ([0-9.]+)", idea["description"]).group(1)
            idea["title"] = f"Learning rate {lr}" if i % 2 else f"Change the learning rate to {lr}"
            if i % 2:
                idea["description"] = f"Set the learning rate LR to {lr} so that gradient descent converges faster."
        return FakeReply(text=json.dumps(ideas))
    return wrapped


@pytest.mark.slow
def test_near_duplicate_ideas_are_skipped_and_linked(tmp_path: Path) -> None:
    """The toy ideator re-proposes learning rates under new titles: with the default text check a repeat is
    skipped before implementation and linked to the earlier idea with the same rate; no job runs for it, and no
    idea with another rate is ever taken for a duplicate."""
    import re

    with FakeLLMServer(reworded(toy_search_responder())) as server:
        cfg = search_config(tmp_path, server.base_url, cluster="debug", dedup={"method": "text"})
        state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    rate = lambda cid: re.search(r"LR to ([0-9.]+)", state.candidates[cid].idea).group(1)  # noqa: E731
    dups = [v for v in state.candidates.values() if v.implement_status == "duplicate"]
    assert dups and state.search.finished
    for v in dups:
        assert rate(v.cid) == rate(v.duplicate_of) and not v.job_id and v.duplicate_score >= 0.45
    distinct = [v for v in state.candidates.values() if v.cid != "baseline" and not v.duplicate_of]
    # a repeat in the same words is always caught (a reworded one may be missed: the check favours precision)
    same_words = {(rate(v.cid), v.idea.startswith("Learning rate")) for v in distinct}
    assert len(same_words) == len(distinct)
    ran = [v for v in state.candidates.values() if not v.duplicate_of and v.cid != "baseline"]   # skipped: no failures
    assert state.execution_rate() == sum(v.status == "ok" and v.reward != 0 for v in ran) / len(ran)
    import pandas as pd

    from toolkit.report.page import build_report
    summary = pd.read_csv(build_report(tmp_path / "run").html.parent / "certification_summary.csv").iloc[0]
    assert summary["duplicates_skipped"] == len(dups)


def test_without_a_terminal_progress_comes_as_log_lines(tmp_path: Path, caplog) -> None:
    """A batch job's log (no terminal): a line per state change and a progress line, not one Rich frame at exit."""
    import logging

    import yaml

    from toolkit.cli import main

    caplog.set_level(logging.INFO, logger="toolkit.report.progress")
    with FakeLLMServer(toy_search_responder()) as server:
        cfg = search_config(tmp_path, server.base_url, cluster="debug", epochs=1)
        path = tmp_path / "search.yaml"
        data = _as_dict(cfg)
        data["run_dir"] = str(tmp_path / "run")
        data["llm"]["ideator"]["api_key_env"] = data["llm"]["implementer"]["api_key_env"] = "PATH"
        path.write_text(yaml.safe_dump(data))
        assert main(["evolve", "--config", str(path)]) == 0
    text = caplog.text
    assert "progress: epoch 1/1" in text and "submitted baseline as job" in text
    assert "result baseline: ok, metric" in text and "search finished" in text


def test_ideator_thinking_budget_per_epoch_reaches_the_sdk_request(tmp_path: Path) -> None:
    """search.thinking_budget_by_epoch [3000, 1500]: the real Anthropic SDK sends budget_tokens 3000 in epoch 0's
    ideation request and 1500 in epoch 1 (later epochs too: the load test), never the ideator's own 2000; the
    implementer's requests keep their own settings (no thinking)."""
    with FakeLLMServer(toy_search_responder()) as server:
        data = _as_dict(search_config(tmp_path, server.base_url, cluster="debug", epochs=2, ideas_per_epoch=2))
        data["search"]["thinking_budget_by_epoch"] = [3000, 1500]
        anthropic = {"provider": "anthropic", "model": "claude-sonnet-4-6", "base_url": server.base_url,
                     "backoff_s": 0.01, "max_tokens": 10000, "temperature": 1.0}
        data["llm"]["ideator"] = {**anthropic, "thinking_budget_tokens": 2000}
        data["llm"]["implementer"] = anthropic
        state = run_search(tmp_path / "run", from_dict(SearchRunConfig, data, "t"), Console(record=True), live=False)
    assert state.search.finished and state.search.epochs_ended == [0, 1]
    messages = [r["body"] for r in server.requests if r["path"] == "/v1/messages"]
    ideation = [b for b in messages if "Reply with ONLY a JSON array" in b["messages"][0]["content"]]
    assert len(ideation) == 2, "one ideation call per epoch (2 ideas, 2 per call)"
    assert [b["thinking"] for b in ideation] == [{"type": "enabled", "budget_tokens": 3000},
                                                 {"type": "enabled", "budget_tokens": 1500}]
    assert "diverse ideas" in ideation[0]["messages"][0]["content"]          # epoch 0: fresh ideas
    implementer = [b for b in messages if b not in ideation]
    assert implementer and all("thinking" not in b for b in implementer)


def test_thinking_budget_by_epoch_is_checked_at_load() -> None:
    from toolkit.errors import ConfigError

    anthropic = {"provider": "anthropic", "model": "claude-sonnet-4-6"}
    ok = from_dict(SearchRunConfig, {"llm": {"ideator": anthropic}, "search": {"thinking_budget_by_epoch": [3000, 0]}},
                   "c.yaml")
    assert [ok.search.thinking_budget(e) for e in range(4)] == [3000, 0, 0, 0]
    assert SearchRunConfig().search.thinking_budget(0) is None        # unset: the ideator's own settings
    bad = [({"provider": "openai", "model": "gpt-5"}, [3000], "anthropic ideators only.*reasoning_effort"),
           ({"provider": "openai-compatible", "base_url": "http://h/v1"}, [3000], "anthropic ideators only"),
           ({**anthropic, "max_tokens": 2000}, [3000, 1500], "max_tokens=2000 must exceed"),
           ({**anthropic, "temperature": 0.7}, [3000], "temperature 1.0"),
           (anthropic, [3000, 500], "below the API minimum")]
    for ideator, budgets, message in bad:
        with pytest.raises(ConfigError, match=f"c.yaml: search.thinking_budget_by_epoch.*{message}"):
            from_dict(SearchRunConfig, {"llm": {"ideator": ideator}, "search": {"thinking_budget_by_epoch": budgets}},
                      "c.yaml")
    with pytest.raises(ConfigError, match="tokens >= 0"):
        from_dict(SearchRunConfig, {"llm": {"ideator": anthropic}, "search": {"thinking_budget_by_epoch": [-1]}}, "c")


def test_grpo_math_ideation_prompts_prefer_algorithms_over_hyper_parameters() -> None:
    """The env's ideation_guidance is in every ideation prompt of grpo_math (fresh, exploit, explore), and
    never in the implementer's prompt; an env without guidance has no such section."""
    from toolkit.envs import load_env
    from toolkit.execute.implementer import implement_prompt
    from toolkit.records import Idea
    from toolkit.search.ideator import ideate_prompt
    from toolkit.search.policy import Call

    grpo = load_env("grpo_math")
    for mode in ("fresh", "exploit", "explore"):
        prompt = ideate_prompt(grpo, Call(mode, 10), [], ["an earlier idea"], 0.48)
        guidance = prompt.split("# What to look for")[1].split("# Already proposed")[0]
        assert "Prefer new training algorithms over hyper-parameter tweaks" in guidance
        assert "do not propose retuning hyper-parameters on their own" in guidance
    assert "Prefer new training algorithms" not in implement_prompt(grpo, Idea("i", "Use REINFORCE."))
    assert "# What to look for" not in ideate_prompt(load_env("tiny_lm"), Call("fresh", 10), [], [], None)


def test_the_fold_types_what_the_search_and_certification_record() -> None:
    """Every event beyond the candidates lands in a typed field (event names and format as ever)."""
    from toolkit.state import Certification, Intent, NoiseFloor, Round, RunState, SearchProgress

    events = [
        {"kind": "pinned", "pins": {"snapshot": {"code/train.py": "ab12"}, "data": {}, "hidden": {}}},
        {"kind": "search_started", "search": {"epochs": 2, "strategy": "evolve"}, "replay": True},
        {"kind": "epoch_started", "t": 5.0, "epoch": 1, "plan": [["exploit", 2], ["explore", 1]]},
        {"kind": "ideation_failed", "epoch": 1}, {"kind": "ideation_failed", "epoch": 1},
        {"kind": "submitting", "name": "toolkit-run-1a2b", "cids": ["e01-000", "e01-001"], "attempt": 1},
        {"kind": "replicas_planned", "purpose": "floor", "epoch": 0, "cids": ["baseline"],
         "runs": [{"rid": "baseline~s1", "parent": "baseline", "seed": 1}]},
        {"kind": "replicas_planned", "purpose": "certify", "round": 0, "epoch": 0, "cids": ["e00-000"],
         "runs": [{"rid": "e00-000~s2", "parent": "e00-000", "seed": 2},
                  {"rid": "baseline~s3", "parent": "baseline", "seed": 3}]},
        {"kind": "noise_floor", "n": 2, "mean": 2.4, "sd": 0.1, "mean_reward": 0.41, "seed_ignored": False, "runs": 2},
        {"kind": "certify_checked", "epoch": 0}, {"kind": "round_judged", "round": 0},
        {"kind": "certify_stopped", "reason": "share spent"}, {"kind": "epoch_ended", "epoch": 1},
        {"kind": "stopping", "reason": "LLM spend cap $1 reached"}, {"kind": "alarm", "reason": "pins changed"},
        {"kind": "search_finished", "reason": "budget"}, {"kind": "meta", "data": {"epoch": 9}},   # unknown: ignored
    ]
    state = RunState()
    for event in events:
        state.apply(event)
    assert state.search == SearchProgress(started=True, config={"epochs": 2, "strategy": "evolve"}, replay=True,
                                          epoch=1, epoch_started_at=5.0, plan=[("exploit", 2), ("explore", 1)],
                                          epochs_ended=[1], ideation_failures={1: 2},
                                          stopping="LLM spend cap $1 reached", finished=True)
    assert (state.search.epochs, state.search.strategy) == (2, "evolve")
    assert state.certification == Certification(
        floor=NoiseFloor(n=2, mean=2.4, sd=0.1, mean_reward=0.41, seed_ignored=False, runs=2),
        rounds={0: Round(cids=("e00-000",), epoch=0, rids=("e00-000~s2", "baseline~s3"))}, judged=[0],
        certified_after=[0], stopped="share spent", seeds_issued=3)
    assert state.intents == {"toolkit-run-1a2b": Intent(cids=("e01-000", "e01-001"), attempt=1)}
    assert state.pins == events[0]["pins"] and state.alarm == "pins changed"
    assert not state.certification.busy() and not RunState().search.started


def test_one_definition_of_valid_execution_rate_best_and_baseline_reward() -> None:
    """A valid result ends ok with a non-zero, non-NaN reward; the execution rate counts finished ideas only (not
    the baseline, not a duplicate skipped before it ran); the search's exemplar bar is the noise floor's mean
    reward where measured, which the tables' baseline reward is not."""
    from toolkit.search.policy import baseline_bar
    from toolkit.state import NoiseFloor, RunState, valid_result

    assert valid_result("ok", 0.5) and not valid_result("ok", 0.0) and not valid_result("ok", float("nan"))
    assert not valid_result("failed", 0.5) and not valid_result("ok", None)
    state = RunState()
    for cid, status, reward in [("baseline", "ok", 0.4), ("a", "ok", 0.6), ("b", "ok", 0.0), ("c", "failed", None)]:
        state.apply({"kind": "idea", "idea_id": cid, "text": cid})
        state.apply({"kind": "result", "cid": cid, "status": status, "reward": reward})
    state.apply({"kind": "idea", "idea_id": "d", "text": "d"})
    state.apply({"kind": "implemented", "cid": "d", "status": "invalid"})
    state.apply({"kind": "idea", "idea_id": "e", "text": "a", "duplicate_of": "a", "dup_policy": "skip"})
    state.apply({"kind": "idea", "idea_id": "f", "text": "f"})     # not finished yet
    assert state.execution_rate() == 1 / 4                          # a of a, b, c, d
    assert state.best_screened().cid == "a" and state.baseline_reward() == 0.4
    floor = NoiseFloor(n=3, mean=2.5, sd=0.1, mean_reward=0.38, seed_ignored=False, runs=3)
    assert baseline_bar(state.candidates, floor) == 0.38 and baseline_bar(state.candidates, None) == 0.4
    state.apply({"kind": "result", "cid": "baseline", "status": "ok", "reward": 0.0})   # a baseline that earned 0
    assert state.baseline_reward() is None and baseline_bar(state.candidates, None) is None
