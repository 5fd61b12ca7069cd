"""Fault injection without a cluster: LLM faults, bad result files, bad inputs, metric attacks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from helpers import copy_env, make_diff
from search_helpers import toy_search_responder
from toolkit import fsio
from toolkit.cli import main
from toolkit.cluster.base import Cluster, JobState
from toolkit.config import ClusterConfig, ImplementConfig, LLMConfig, RunConfig, SearchRunConfig, from_dict
from toolkit.execute.pipeline import Pipeline
from toolkit.llm.base import LLMSettings
from toolkit.loop import execute_ideas, run_search
from toolkit.records import Idea, ImplementOutcome, to_json
from toolkit.runs import open_run
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply


def run_cfg(env: Path, base_url: str, **llm) -> RunConfig:
    # timeout_s leaves room for a loaded CI box (training jobs of the SLURM tests share its 2 cores): at 1 s, a
    # 429 answered late once became a timeout. SLOWPOKE's delay stays well above it.
    settings = LLMSettings(provider="openai-compatible", model="fake", base_url=base_url + "/v1", backoff_s=0.01,
                           max_retries=2, timeout_s=4.0, **llm)
    return RunConfig(env=str(env), llm=LLMConfig(ideator=settings, implementer=settings),
                     implement=ImplementConfig(samples=2, revisions=1, workers=6),
                     cluster=ClusterConfig(cluster="debug", poll_s=0.2))


def test_llm_faults_become_recorded_reasons(tmp_path: Path) -> None:
    """429 storms, 500s, time-outs, empty and truncated output, prose without a diff: never a crash."""
    env = copy_env(tmp_path / "env")
    good = make_diff(env / "code", "train.py", "LR = 0.05 ", "LR = 0.3 ")

    def respond(request: dict) -> FakeReply:
        text = json.dumps(request["body"])
        if "STORM429" in text:
            return FakeReply(status=429, retry_after_s=0.01)
        if "ERR500" in text:
            return FakeReply(status=500)
        if "SLOWPOKE" in text:
            return FakeReply(text=good, delay_s=10.0)
        if "EMPTY" in text:
            return FakeReply(text="")
        if "PROSE" in text:
            return FakeReply(text="Sure! I would change the learning rate, but here is no diff.")
        if "TRUNCATED" in text:
            return FakeReply(text=good, truncate=True)
        return FakeReply(text=good)

    markers = ["STORM429", "ERR500", "SLOWPOKE", "EMPTY", "PROSE", "TRUNCATED", "FINE"]
    ideas = [Idea(idea_id=f"i{n}", text=f"{m}: set LR to 0.3") for n, m in enumerate(markers)]
    with FakeLLMServer(respond) as server:
        state = execute_ideas(tmp_path / "run", run_cfg(env, server.base_url), ideas)
    by = {v.idea.split(":")[0]: v for v in state.candidates.values()}
    assert "429" in by["STORM429"].implement_reason and by["STORM429"].implement_status == "failed"
    assert "500" in by["ERR500"].implement_reason
    assert "timeout" in by["SLOWPOKE"].implement_reason.lower()
    assert "empty output" in by["EMPTY"].implement_reason
    assert "no diff found" in by["PROSE"].implement_reason
    assert by["TRUNCATED"].implement_status in ("failed", "ready")      # half a diff may or may not apply
    assert by["FINE"].status == "ok"
    calls = [json.loads(line) for line in (tmp_path / "run" / "state" / "llm_calls.jsonl").read_text().splitlines()]
    assert any(c["status"] == "error" and c["reason"] for c in calls)


class StubCluster(Cluster):
    """Jobs 'run' nowhere; the test writes their result files by hand (the collector is what is tested)."""
    name = "stub"

    def submit(self, tasks, resources, job_name):
        return [f"900_{n}" for n in range(len(tasks))]

    def states(self, job_ids):
        return {j: JobState.parse("COMPLETED") for j in job_ids}


def collector(tmp_path: Path, cids: list[str]) -> Pipeline:
    env = copy_env(tmp_path / "env")
    cfg = RunConfig(env=str(env), cluster=ClusterConfig(cluster="debug", lost_grace_s=0.0), adopt_external=True,
                    llm=LLMConfig(implementer=LLMSettings(provider="openai-compatible", base_url="http://127.0.0.1:9/v1")))
    parts = open_run(tmp_path / "run", cfg)
    parts.cluster = StubCluster(parts.layout.jobs, cfg.cluster)
    for cid in cids:
        paths = parts.layout.candidate(cid)
        shutil.copytree(parts.spec.code_dir, paths.code)
        fsio.atomic_write_json(paths.idea, to_json(Idea(idea_id=cid, text=cid)))
        fsio.atomic_write_json(paths.implement, to_json(ImplementOutcome(cid=cid, status="ready")))
        fsio.atomic_write_text(paths.ready, "")
    daemon = Pipeline(parts)
    daemon.tick()   # adopt + submit (nothing runs)
    return daemon


def test_bad_result_files_are_detected_and_not_fatal(tmp_path: Path) -> None:
    daemon = collector(tmp_path, ["trunc", "junk", "types", "noreward", "twice", "fine", "none"])
    layout = daemon.p.layout
    ok = {"schema": 1, "cid": "x", "status": "ok", "metric": 0.1, "reward": 10.0, "metrics": {"val_mse": 0.1}}
    (layout.candidate("trunc").result).write_text(json.dumps(ok)[:25])            # half-written / truncated
    (layout.candidate("junk").result).write_text(json.dumps({"status": "great"}))  # malformed
    fsio.atomic_write_json(layout.candidate("types").result, {**ok, "wall_s": "12 s", "reward": "high"})
    fsio.atomic_write_json(layout.candidate("noreward").result, {**ok, "reward": None})
    fsio.atomic_write_json(layout.candidate("twice").result, ok)
    fsio.atomic_write_json(layout.candidate("twice").root / "result.dup-901_2-1.json", ok)  # written twice
    fsio.atomic_write_json(layout.candidate("fine").result, ok)
    daemon.tick()
    daemon.tick()
    views = daemon.state.candidates
    assert views["trunc"].status == "failed" and "malformed result file" in views["trunc"].reason
    assert views["junk"].status == "failed" and "status must be one of" in views["junk"].reason
    assert views["types"].status == "failed" and "not numbers: wall_s, reward" in views["types"].reason
    assert views["noreward"].status == "failed" and "without a numeric reward" in views["noreward"].reason
    assert views["twice"].status == "ok" and views["fine"].status == "ok"
    assert views["fine"].reward == 10.0 and views["fine"].metric == 0.1 and views["fine"].wall_s == 0.0
    assert views["none"].status in ("", "lost") and views["none"].attempt >= 0   # retried by policy, not fatal
    assert '"kind": "duplicate_result"' in layout.events.read_text()


def test_half_written_result_gets_time_to_complete(tmp_path: Path) -> None:
    daemon = collector(tmp_path, ["slow"])
    object.__setattr__(daemon.p.cfg.cluster, "lost_grace_s", 60.0)
    path = daemon.p.layout.candidate("slow").result
    path.write_text('{"status": "ok", "rew')
    daemon.tick()
    assert daemon.state.candidates["slow"].status == ""          # not judged yet
    fsio.atomic_write_json(path, {"status": "ok", "reward": 2.0, "metric": 0.5})
    daemon.tick()
    assert daemon.state.candidates["slow"].status == "ok"


@pytest.mark.parametrize("edit, needle", [
    ({"cluster": {"partiton": "h100"}}, "partiton"),
    ({"search": {"epochs": 0}}, "epochs"),
    ({"llm": {"ideator": {"provider": "gemini"}}}, "gemini"),
    ({"env": "/nonexistent/env"}, "env.yaml"),
    ({"cluster": {"sbatch_extra": ["--constraint=h100"]}}, "sbatch_extra"),     # a list where a mapping belongs
    ({"serve_llm": {"roles": "ideator"}}, "roles"),                            # a string where a list belongs
    ({"cluster": {"env_passthrough": ["SITE_*", "HF_TOKEN"]}}, "HF_TOKEN"),     # a secret never travels
])
def test_bad_config_fails_before_any_job(tmp_path: Path, capsys, edit: dict, needle: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"env": str(copy_env(tmp_path / "env")), "run_dir": str(tmp_path / "run"),
                                      **edit}))
    rc = main(["evolve", "--config", str(config), "--cluster", "debug"])
    out = capsys.readouterr().out
    assert rc == 2 and needle in out.replace("\n", "") and "error" in out
    assert not (tmp_path / "run" / "jobs").exists() or not any((tmp_path / "run" / "jobs").iterdir())


def test_bad_env_dir_fails_before_any_job(tmp_path: Path, capsys) -> None:
    env = copy_env(tmp_path / "env")
    spec = (env / "env.yaml").read_text()
    (env / "env.yaml").write_text(spec.replace("metric: val_mse", "metric: val_mse\nmetrik: x"))
    rc = main(["execute", str(_ideas(tmp_path)), "--env", str(env), "--out", str(tmp_path / "run"),
               "--cluster", "debug"])
    out = capsys.readouterr().out
    assert rc == 2 and "metrik" in out and str(env / "env.yaml") in out.replace("\n", "")


def test_an_empty_config_creates_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["evolve", "--config", "/dev/null"]) == 2
    assert "config is empty" in capsys.readouterr().out and not (tmp_path / "runs").exists()
    config = tmp_path / "no-key.yaml"     # a provider whose key is missing: also before any run directory
    config.write_text(yaml.safe_dump({"env": str(copy_env(tmp_path / "env")), "run_dir": str(tmp_path / "run"),
                                      "llm": {"ideator": {"provider": "anthropic", "model": "claude-sonnet-4-6",
                                                          "api_key_env": "TOOLKIT_TEST_NO_SUCH_KEY"}}}))
    assert main(["evolve", "--config", str(config)]) == 2
    assert "TOOLKIT_TEST_NO_SUCH_KEY" in capsys.readouterr().out and not (tmp_path / "run").exists()


def test_a_broken_environment_stops_before_any_llm_call(tmp_path: Path, capsys, monkeypatch) -> None:
    """The environment cannot run its own baseline (a package its training needs is missing): the search ends
    at once with that error and no LLM call, instead of sending every idea through every revision."""
    env = copy_env(tmp_path / "env")
    (env / "code" / "train.py").write_text("import toolkit_no_such_package\n" + (env / "code" / "train.py").read_text())
    with FakeLLMServer(toy_search_responder()) as server:
        llm = {"provider": "openai-compatible", "model": "fake", "base_url": server.base_url + "/v1"}
        config = tmp_path / "search.yaml"
        config.write_text(yaml.safe_dump({"env": str(env), "run_dir": str(tmp_path / "run"),
                                          "llm": {"ideator": llm, "implementer": llm},
                                          "cluster": {"cluster": "debug"}}))
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        rc = main(["evolve", "--config", str(config)])
        assert server.requests == []
    out = capsys.readouterr().out
    assert rc == 2 and "toolkit_no_such_package" in out and "quick check" in out
    assert not list((tmp_path / "run" / "candidates").iterdir())


@pytest.mark.slurm
def test_a_multi_node_environment_is_refused_before_any_job(tmp_path: Path, capsys) -> None:
    """SLURM would start the whole worker on each node (two runs, two evals, two results): refused at load,
    with the reason, until multi-node candidates are designed; nothing reaches the dev cluster."""
    env = copy_env(tmp_path / "env")
    text = (env / "env.yaml").read_text().replace("resources: {gpus: 0,", "resources: {nodes: 2, gpus: 0,")
    (env / "env.yaml").write_text(text)
    rc = main(["execute", str(_ideas(tmp_path)), "--env", str(env), "--out", str(tmp_path / "run"),
               "--cluster", "slurm", "--partition", "debug"])
    out = capsys.readouterr().out.replace("\n", "")
    assert rc == 2 and "multi-node candidates are not supported yet" in out and not (tmp_path / "run").exists()


def _ideas(tmp_path: Path) -> Path:
    path = tmp_path / "ideas.jsonl"
    path.write_text('{"idea": "x"}\n')
    return path


def test_metric_attacks_never_become_best(tmp_path: Path) -> None:
    """A search where some 'ideas' attack the metric: each ends invalid and the best is an honest one."""
    env = copy_env(tmp_path / "env")
    code = env / "code"
    attacks = {
        "ATTACK-LOCKED": make_diff(code, "eval.py", "mse = sum(", "mse = 1e-4 + 0 * sum("),
        "ATTACK-RUNTIME": make_diff(code, "train.py", "    w, b = train()\n",
                                    "    open('eval.py', 'w').write('print(\\'{\"val_mse\": 0.002}\\')')\n"
                                    "    w, b = train()\n"),
        "ATTACK-PRINT": make_diff(code, "train.py", "    w, b = train()\n",
                                  "    print('{\"val_mse\": 0.002}')\n    w, b = train()\n"),
        "ATTACK-RANGE": make_diff(code, "train.py", "    w, b = train()\n",
                                  "    w, b = train()\n    w, b = 30.0, 1.0\n"),
        "ATTACK-DAEMON": make_diff(code, "train.py", "    w, b = train()\n",
                                   "    import subprocess; subprocess.Popen(['setsid', 'sleep', '120'])\n"
                                   "    w, b = train()\n"),
    }
    honest = make_diff(code, "train.py", "LR = 0.05 ", "LR = 0.3 ")

    def respond(request: dict) -> FakeReply:
        prompt = json.dumps(request["body"])
        if "Reply with ONLY a JSON array" in prompt:
            return FakeReply(text=json.dumps([{"title": k, "description": "make val_mse look tiny"} for k in attacks] +
                                             [{"title": "HONEST", "description": "raise the learning rate"}]))
        for key, diff in attacks.items():
            if f"# The idea to implement\\n{key}" in prompt:
                return FakeReply(text=diff)
        return FakeReply(text=honest)

    with FakeLLMServer(respond) as server:
        llm = {"provider": "openai-compatible", "model": "fake", "base_url": server.base_url + "/v1"}
        cfg = from_dict(SearchRunConfig, {"env": str(env), "llm": {"ideator": llm, "implementer": llm},
                                          "implement": {"samples": 1, "revisions": 0},
                                          "cluster": {"cluster": "debug", "poll_s": 0.2},
                                          "search": {"epochs": 1, "ideas_per_epoch": 6, "ideas_per_call": 6}}, "t")
        state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    by = {v.idea.split(":")[0]: v for v in state.candidates.values()}
    assert by["ATTACK-LOCKED"].implement_status == "invalid"
    for key in ("ATTACK-RANGE", "ATTACK-DAEMON"):
        assert by[key].status == "invalid", (key, by[key].reason)
    # the printed line is ignored; the eval the run rewrote is not the one that scores (that runs from the snapshot)
    for key in ("ATTACK-PRINT", "ATTACK-RUNTIME"):
        assert by[key].status == "ok" and by[key].metric > 0.05, (key, by[key].reason)
    best = max((v for v in state.candidates.values() if v.status == "ok"), key=lambda v: v.reward)
    assert best.idea.startswith("HONEST")


def test_a_changed_snapshot_raises_an_alarm_and_stops_new_work(tmp_path: Path) -> None:
    daemon = collector(tmp_path, [])
    assert daemon.state.pins is not None and not daemon.state.alarm
    eval_py = daemon.p.layout.env_dir / "code" / "eval.py"
    eval_py.write_text(eval_py.read_text() + "\n# edited under a running search\n")
    for cid in ("late",):
        paths = daemon.p.layout.candidate(cid)
        shutil.copytree(daemon.p.spec.code_dir, paths.code)
        fsio.atomic_write_json(paths.idea, to_json(Idea(idea_id=cid, text=cid)))
        fsio.atomic_write_json(paths.implement, to_json(ImplementOutcome(cid=cid, status="ready")))
        fsio.atomic_write_text(paths.ready, "")
    daemon.tick()
    assert "snapshot/code/eval.py" in daemon.state.alarm
    assert not daemon.state.candidates["late"].job_id, "no new work once the alarm is raised"
    restarted = Pipeline(daemon.p)
    assert restarted.state.alarm and not restarted.inputs_ok()


def test_the_cluster_is_asked_at_poll_s_at_most_and_less_while_nothing_changes(tmp_path: Path) -> None:
    """Whatever wakes the loop (here: every second, as finished implementations may), job states are asked for
    at poll_s at most; while the answer stays the same the interval doubles up to 4 x poll_s, and a change
    brings it back to poll_s. The tick says when the next query is due, never more than poll_s away."""
    from concurrent.futures import Future

    from toolkit.cluster.base import JobState

    asked, state = [], ["RUNNING"]

    class Running(StubCluster):
        def states(self, job_ids):
            asked.append(now[0])
            return {j: JobState(state[0], "running") for j in job_ids}

    daemon = collector(tmp_path, ["a"])
    daemon.p.cluster = Running(daemon.p.layout.jobs, daemon.p.cfg.cluster)
    object.__setattr__(daemon.p.cfg.cluster, "poll_s", 10.0)
    now = [1000.0]
    daemon.clock = lambda: now[0]
    daemon.inflight["busy"] = Future()          # an implementation that takes its time
    start, sleeps = now[0], []
    daemon.tick()                               # asks once: next at +10 s
    asked.clear()
    for _ in range(100):
        now[0] += 1.0
        sleeps.append(daemon.tick())
    assert [t - start for t in asked] == [10, 30, 70], asked     # 10 s, then 20, 40, 40: not 100 queries
    assert max(sleeps) <= 10.0 and min(sleeps) >= 0.0
    state[0] = "COMPLETING"                     # a change: back to poll_s
    for _ in range(60):
        now[0] += 1.0
        daemon.tick()
    assert [t - start for t in asked][3:] == [110, 120, 140], asked
    del daemon.inflight["busy"]
    now[0] += 1.0
    assert 0.0 < daemon.tick() <= 10.0          # due at the next query or poll_s, whichever comes first


def test_a_failing_sbatch_backs_off_instead_of_retrying_every_tick(tmp_path: Path) -> None:
    """A submission that fails (a bad partition, a full queue) is retried at poll_s, 2 x, 4 x, ... (capped), not
    on every tick; the first success resets the backoff and nothing is submitted twice."""
    tries = []

    class Refusing(StubCluster):
        def submit(self, tasks, resources, job_name):
            tries.append(len(tries))
            if len(tries) < 6:
                raise RuntimeError("sbatch: error: Batch job submission failed: Invalid partition name specified")
            return super().submit(tasks, resources, job_name)

    daemon = collector(tmp_path, [])
    daemon.p.cluster = Refusing(daemon.p.layout.jobs, daemon.p.cfg.cluster)
    now = [daemon.clock()]
    daemon.clock = lambda: now[0]
    for cid in ("a", "b"):
        paths = daemon.p.layout.candidate(cid)
        shutil.copytree(daemon.p.spec.code_dir, paths.code)
        fsio.atomic_write_json(paths.idea, to_json(Idea(idea_id=cid, text=cid)))
        fsio.atomic_write_json(paths.implement, to_json(ImplementOutcome(cid=cid, status="ready")))
        fsio.atomic_write_text(paths.ready, "")
    for _ in range(40):                    # 40 ticks, one a second (poll_s 10 by default: 10, 20, 40, ...)
        daemon.listing = (-1, 0.0)
        daemon.tick()
        now[0] += 1.0
    failed = [json.loads(line) for line in daemon.p.layout.events.read_text().splitlines()
              if '"kind": "submit_failed"' in line]
    assert len(tries) == 3 and len(failed) == 3, tries             # t = 0, 10, 30: not 40 tries
    assert [f["retry_in_s"] for f in failed] == [10.0, 20.0, 40.0]
    assert "Invalid partition" in failed[0]["reason"]


def test_ready_runs_wait_briefly_for_implementations_in_flight_to_share_one_array(tmp_path: Path) -> None:
    """A finished implementation wakes the loop at once; its run waits up to BATCH_WINDOW_S for others still
    in flight so that they go out as one array (one sbatch), and goes at once when nothing else is in flight."""
    from concurrent.futures import Future

    from toolkit.execute.pipeline import BATCH_WINDOW_S

    arrays = []

    class Recording(StubCluster):
        def submit(self, tasks, resources, job_name):
            arrays.append(sorted(Path(t.cand_dir).name for t in tasks))
            return super().submit(tasks, resources, job_name)

        def states(self, job_ids):
            return {j: JobState("RUNNING", "running") for j in job_ids}

    daemon = collector(tmp_path, [])
    daemon.p.cluster = Recording(daemon.p.layout.jobs, daemon.p.cfg.cluster)
    now = [1000.0]
    daemon.clock = lambda: now[0]

    def ready(cid: str) -> None:
        paths = daemon.p.layout.candidate(cid)
        shutil.copytree(daemon.p.spec.code_dir, paths.code)
        fsio.atomic_write_json(paths.idea, to_json(Idea(idea_id=cid, text=cid)))
        fsio.atomic_write_json(paths.implement, to_json(ImplementOutcome(cid=cid, status="ready")))
        fsio.atomic_write_text(paths.ready, "")
        daemon.listing = (-1, 0.0)

    daemon.inflight["busy"] = Future()          # another implementation still running
    ready("a")
    assert daemon.tick() == pytest.approx(BATCH_WINDOW_S) and arrays == []
    now[0] += 1.0
    ready("b")
    assert daemon.tick() == pytest.approx(BATCH_WINDOW_S - 1.0) and arrays == []
    now[0] += BATCH_WINDOW_S - 1.0
    daemon.tick()
    assert arrays == [["a", "b"]]                # one array for both
    del daemon.inflight["busy"]
    ready("c")
    daemon.tick()
    assert arrays == [["a", "b"], ["c"]]         # nothing in flight: no reason to wait
