"""Disk hygiene: the keep policy (config `disk`) through the real executor, and the removal's own guarantees.

The executor test runs real candidates (local cluster: real worker processes, confined runs, the trusted
scorer) of an environment whose training leaves a dummy checkpoint in its code dir and its scratch, as nanogpt
leaves ckpt.pt: failed and invalid runs keep none, ok runs outside the top k lose theirs, the top k keep theirs,
a symlink candidate code planted toward files outside the run is never followed, and a restart after a crash
between removing and recording finishes the job without failing on what is already gone.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers import copy_env, make_diff, scripted
from toolkit.cli import main
from toolkit.config import ClusterConfig, DiskConfig, ImplementConfig, LLMConfig, RunConfig, from_dict
from toolkit.disk import human_bytes, prune_outputs, tree_bytes
from toolkit.errors import ConfigError
from toolkit.execute.keep import to_prune
from toolkit.layout import CandidatePaths, RunLayout
from toolkit.llm.base import LLMSettings
from toolkit.loop import execute_ideas
from toolkit.records import Idea
from toolkit.report.page import build_report
from toolkit.state import RunState, load_state
from toolkit.testing.fake_llm import FakeLLMServer

CKPT_BYTES = 1_500_000                 # above large_file_mb=1 below; model.json (tens of bytes) is not large
CHECKPOINT = """    # a dummy checkpoint where real training leaves one: the code dir and the scratch
    for folder in (".", os.environ["TOOLKIT_SCRATCH"]):
        with open(os.path.join(folder, "ckpt.bin"), "wb") as f:
            f.write(b"\\0" * int(os.environ["TOY_CKPT_BYTES"]))
    print("checkpoint written")
"""
MARK = '    print("checkpoint written")\n'


# ---- through the real executor -------------------------------------------------------------------------------
def checkpointing_env(tmp_path: Path) -> Path:
    """The toy environment, its training writing ckpt.bin (CKPT_BYTES) into its code dir and its scratch."""
    env = copy_env(tmp_path / "env")
    train = env / "code" / "train.py"
    train.write_text(train.read_text() + CHECKPOINT)
    spec = (env / "env.yaml").read_text().replace('env_vars: {TOY_STEPS: "50"}',
                                                   f'env_vars: {{TOY_STEPS: "50", TOY_CKPT_BYTES: "{CKPT_BYTES}"}}')
    (env / "env.yaml").write_text(spec)
    return env


def idea_diffs(code: Path, outside: Path) -> dict[str, str]:
    lr = {f"LR{n}": make_diff(code, "train.py", "LR = 0.05 ", f"LR = 0.{n} ") for n in (1, 2, 3)}
    links = (f"    os.symlink({str(outside / 'big.bin')!r}, 'outside_ckpt.bin')\n"
             f"    os.symlink({str(outside)!r}, 'outside_dir')\n"
             f"    os.symlink({str(outside)!r}, os.path.join(os.environ['TOOLKIT_SCRATCH'], 'outside_dir'))\n"
             "    raise SystemExit(3)\n")
    return {**lr, "CRASH": make_diff(code, "train.py", MARK, "    raise RuntimeError('boom after the checkpoint')\n"),
            "RANGE": make_diff(code, "train.py", "    w, b = train()\n", "    w, b = train()\n    w, b = 30.0, 1.0\n"),
            "LINKS": make_diff(code, "train.py", MARK, links)}


def disk_config(env: Path, base_url: str) -> RunConfig:
    llm = LLMSettings(provider="anthropic", model="claude-sonnet-4-6", base_url=base_url, backoff_s=0.01)
    return RunConfig(env=str(env), llm=LLMConfig(implementer=llm), disk=DiskConfig(keep_top_k=1, large_file_mb=1),
                     implement=ImplementConfig(samples=1, revisions=0, workers=6),
                     cluster=ClusterConfig(cluster="local", poll_s=0.5, lost_grace_s=20))


def run_ideas(run_dir: Path, env: Path, diffs: dict[str, str]) -> RunState:
    ideas = [Idea(idea_id=key.lower(), text=f"IDEA-{key}: change train.py") for key in diffs]
    rules = {f"IDEA-{key}:": (lambda rev, diff=diff: diff) for key, diff in diffs.items()}
    with FakeLLMServer(scripted(rules)) as server:
        return execute_ideas(run_dir, disk_config(env, server.base_url), ideas)


def checkpoints(paths: CandidatePaths) -> list[Path]:
    return [p for p in (paths.code / "ckpt.bin", paths.scratch / "ckpt.bin") if p.exists()]


def pruned_events(layout: RunLayout) -> list[dict]:
    return [e for e in map(json.loads, layout.events.read_text().splitlines()) if e["kind"] == "pruned"]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory) -> tuple[RunLayout, Path]:
    tmp_path = tmp_path_factory.mktemp("disk")
    outside = tmp_path / "outside"   # files of someone else's, which a planted symlink points at
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\0" * 2 * CKPT_BYTES)
    env = checkpointing_env(tmp_path)
    with pytest.MonkeyPatch.context() as patch:    # module scope: conftest's planted key is not set yet
        patch.setenv("ANTHROPIC_API_KEY", "sk-ant-planted-secret")
        run_ideas(tmp_path / "run", env, idea_diffs(env / "code", outside))
    return RunLayout(tmp_path / "run"), outside


def test_only_the_top_k_ok_runs_keep_their_checkpoints(pruned_run) -> None:
    layout, outside = pruned_run
    state = load_state(layout)
    views = state.candidates
    assert [views[c].status for c in ("lr1", "lr2", "lr3", "crash", "range", "links")] == \
        ["ok", "ok", "ok", "failed", "invalid", "failed"], {c: v.reason for c, v in views.items()}
    best = max(("lr1", "lr2", "lr3"), key=lambda c: views[c].reward)
    assert len(checkpoints(layout.candidate(best))) == 2 and views[best].pruned_bytes is None
    for cid in {"lr1", "lr2", "lr3", "crash", "range", "links"} - {best}:
        paths = layout.candidate(cid)
        assert checkpoints(paths) == [], cid
        assert views[cid].pruned_bytes == 2 * CKPT_BYTES, cid
        # the toolkit's records and the small outputs stay
        for kept in (paths.result, paths.worker_log, paths.patch, paths.idea, paths.implement, paths.code / "train.py"):
            assert kept.is_file(), kept
        assert cid in ("crash", "links") or (paths.code / "model.json").is_file()
    events = pruned_events(layout)
    assert sorted(e["cid"] for e in events) == sorted({"lr1", "lr2", "lr3", "crash", "range", "links"} - {best})
    assert all(sorted(e["files"]) == ["code/ckpt.bin", "scratch/ckpt.bin"] for e in events)


def test_a_planted_symlink_is_not_followed(pruned_run) -> None:
    layout, outside = pruned_run
    code, scratch = layout.candidate("links").code, layout.candidate("links").scratch
    assert (code / "outside_ckpt.bin").is_symlink() and (code / "outside_dir").is_symlink()
    assert (scratch / "outside_dir").is_symlink()
    assert (outside / "big.bin").stat().st_size == 2 * CKPT_BYTES


def test_status_and_report_give_the_size_and_what_was_freed(pruned_run, tmp_path: Path, capsys) -> None:
    layout, _ = pruned_run
    assert main(["status", str(layout.root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    size = tree_bytes(layout.root)
    assert f"disk: run directory {human_bytes(size)}; large outputs removed: {human_bytes(10 * CKPT_BYTES)} " \
           "(5 finished run(s) pruned)" in out
    build_report(layout.root, tmp_path / "report")
    row = pd.read_csv(tmp_path / "report" / "disk.csv").iloc[0]
    assert row["freed_bytes"] == 10 * CKPT_BYTES and row["runs_pruned"] == 5 and row["runs_keeping_outputs"] == 1
    assert size <= row["run_dir_bytes"] and row["keep_top_k"] == 1
    assert human_bytes(10 * CKPT_BYTES) in (tmp_path / "report" / "index.html").read_text()


def test_a_restart_finishes_pruning_and_does_not_fail_on_what_is_gone(pruned_run, tmp_path: Path) -> None:
    """A crash after removing and before recording: the restart prunes again (nothing left: 0 bytes), even where
    a whole output dir is gone; nothing is submitted again, nothing pruned twice."""
    layout, outside = pruned_run
    run_dir = tmp_path / "run"
    shutil.copytree(layout.root, run_dir, symlinks=True)
    copy = RunLayout(run_dir)
    lines = copy.events.read_text().splitlines(keepends=True)
    dropped = [json.loads(line)["cid"] for line in lines if '"kind": "pruned"' in line][-2:]
    copy.events.write_text("".join(line for line in lines if not ('"kind": "pruned"' in line
                                                                   and json.loads(line)["cid"] in dropped)))
    shutil.rmtree(copy.candidate(dropped[0]).scratch)
    submitted = copy.events.read_text().count('"kind": "submitted"')
    env = layout.root.parent / "env"
    state = run_ideas(run_dir, env, idea_diffs(env / "code", outside))
    assert copy.events.read_text().count('"kind": "submitted"') == submitted
    assert [state.candidates[c].pruned_bytes for c in dropped] == [0, 0]
    assert len(pruned_events(copy)) == 5


# ---- the policy and the removal, in-process --------------------------------------------------------------------
def state_of(results: dict[str, tuple[str, float | None]]) -> RunState:
    state = RunState()
    for cid, (status, reward) in results.items():
        state.apply({"kind": "result", "cid": cid, "status": status, "reward": reward})
    return state


def test_the_keep_policy() -> None:
    state = state_of({"a": ("ok", 1.0), "b": ("ok", 3.0), "c": ("ok", 2.0), "d": ("failed", None),
                      "e": ("timeout", None), "f": ("invalid", None), "g": ("lost", None), "b~s7": ("ok", 9.0)})
    state.apply({"kind": "idea", "idea_id": "h", "text": "still running"})
    assert sorted(to_prune(state, DiskConfig(keep_top_k=2))) == ["a", "b~s7", "d", "e", "f", "g"]
    assert sorted(to_prune(state, DiskConfig(keep_top_k=0))) == ["a", "b", "b~s7", "c", "d", "e", "f", "g"]
    assert to_prune(state, DiskConfig(prune=False)) == []
    state.apply({"kind": "pruned", "cid": "a", "bytes": 0})
    assert "a" not in to_prune(state, DiskConfig(keep_top_k=2))      # once per run
    state.apply({"kind": "result", "cid": "i", "status": "ok", "reward": 5.0})
    assert "c" in to_prune(state, DiskConfig(keep_top_k=2))          # pushed out of the top 2


def test_removal_stays_inside_the_candidates_own_dirs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\0" * 3000)
    paths = CandidatePaths(tmp_path / "cand")
    (paths.code / "sub").mkdir(parents=True)
    paths.scratch.mkdir()
    for big in (paths.code / "ckpt.pt", paths.code / "sub" / "model.safetensors", paths.scratch / "cache.bin"):
        big.write_bytes(b"\0" * 2000)
    (paths.code / "train.py").write_text("print('small')\n")
    paths.result.write_bytes(b"{}" + b" " * 5000)          # the toolkit's records are never looked at
    (paths.code / "link.bin").symlink_to(outside / "big.bin")
    (paths.code / "linkdir").symlink_to(outside, target_is_directory=True)
    done = prune_outputs(paths, min_bytes=1000)
    assert done.bytes == 6000 and done.files == ("code/ckpt.pt", "code/sub/model.safetensors", "scratch/cache.bin")
    assert (paths.code / "train.py").exists() and paths.result.exists() and (outside / "big.bin").exists()
    assert (paths.code / "link.bin").is_symlink() and (paths.code / "linkdir").is_symlink()
    assert prune_outputs(paths, min_bytes=1000).bytes == 0     # idempotent


def test_a_symlinked_output_dir_or_candidate_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\0" * 3000)
    paths = CandidatePaths(tmp_path / "cand")
    paths.root.mkdir()
    paths.code.symlink_to(outside, target_is_directory=True)
    paths.scratch.symlink_to(outside, target_is_directory=True)
    linked = CandidatePaths(tmp_path / "linked")
    linked.root.symlink_to(paths.root, target_is_directory=True)
    (outside / "code").mkdir()
    (outside / "code" / "big.bin").write_bytes(b"\0" * 3000)
    other = CandidatePaths(tmp_path / "other")
    other.root.symlink_to(outside, target_is_directory=True)
    for candidate in (paths, linked, other, CandidatePaths(tmp_path / "missing")):
        assert prune_outputs(candidate, min_bytes=1).bytes == 0
    assert (outside / "big.bin").exists() and (outside / "code" / "big.bin").exists()


def test_disk_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="keep_top"):
        from_dict(RunConfig, {"disk": {"keep_top": 3}}, "run.yaml")
    with pytest.raises(ConfigError, match="keep_top_k=-1"):
        DiskConfig(keep_top_k=-1)
    assert from_dict(RunConfig, {"disk": {"keep_top_k": 0, "prune": False}}, "run.yaml").disk.keep_top_k == 0


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1500, 2_500_000, 3 * 10**9)] == ["0 B", "999 B", "1.5 kB", "2.5 MB",
                                                                              "3.0 GB"]


def test_a_batch_log_says_what_was_removed() -> None:
    from toolkit.report.progress import event_line

    event = {"kind": "pruned", "cid": "idea-7", "bytes": 2_000_000, "files": ["code/ckpt.pt", "scratch/x.bin"]}
    assert event_line(event) == "removed 2.0 MB of large outputs of idea-7 (code/ckpt.pt, scratch/x.bin)"
    assert event_line({**event, "bytes": 0, "files": []}) is None        # nothing to say
