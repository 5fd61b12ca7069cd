"""The execution rate as measured and as the paper counted it: the same five ideas run through `toolkit execute`
twice (toy env, local executor, real SDK against the fake server), once with the preflight (compile + quick
check, failures revised) and once with `implement.preflight: false` (the paper's setting: only patchability is
checked before launch). `toolkit report` then shows both rates; the numbers are checked against the files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import copy_env, make_diff, scripted
from test_report import Tables
from toolkit.cli import main
from toolkit.layout import RunLayout
from toolkit.report.page import build_report
from toolkit.state import load_state
from toolkit.testing.fake_llm import FakeLLMServer

IDEAS = {
    "GOOD": "GOOD: raise the learning rate to 0.3.",
    "REVISE": "REVISE: check the data at import time.",         # first diff breaks at import, its revision is fine
    "QCONLY": "QCONLY: refuse to be quick-checked.",             # fails only its quick check, runs well
    "SYNTAX": "SYNTAX: write the learning rate compactly.",      # does not compile
    "NODIFF": "NODIFF: fit the line with a quantum annealer.",   # never a diff that applies
}


def rules(code: Path) -> dict:
    good = make_diff(code, "train.py", "LR = 0.05 ", "LR = 0.3 ")
    broken = make_diff(code, "train.py", "LR = 0.05 ", "raise RuntimeError('broken at import')\nLR = 0.05 ")
    fixed = make_diff(code, "train.py", "LR = 0.05 ", "LR = 0.2 ")
    refuse = "if os.environ.get('TOOLKIT_QUICK_CHECK'):\n    raise SystemExit('no quick checks')\n"
    qc_only = make_diff(code, "train.py", "LR = 0.05 ", refuse + "LR = 0.05 ")
    syntax = make_diff(code, "train.py", "LR = 0.05 ", "LR = = 0.05 ")
    return {"GOOD": lambda rev: good, "REVISE": lambda rev: fixed if rev else broken,
            "QCONLY": lambda rev: qc_only, "SYNTAX": lambda rev: syntax}


def execute(root: Path, preflight: bool) -> RunLayout:
    name = "preflight-on" if preflight else "preflight-off"
    env = copy_env(root / f"env-{name}")
    ideas = root / "ideas.jsonl"
    ideas.write_text("".join(json.dumps({"idea": text}) + "\n" for text in IDEAS.values()))
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"implement": {"samples": 1, "revisions": 1, "workers": 5, "preflight": preflight},
                                      "cluster": {"cluster": "local", "poll_s": 0.5, "lost_grace_s": 20.0},
                                      "llm": {"implementer": {"backoff_s": 0.01, "max_tokens": 2000}}}))
    with FakeLLMServer(scripted(rules(env / "code"))) as server:
        rc = main(["execute", str(ideas), "--env", str(env), "--out", str(root / name), "--config", str(config),
                   "--llm", "anthropic", "--model", "claude-sonnet-4-6", "--base-url", server.base_url])
    assert rc == 0
    return RunLayout(root / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunLayout]:
    root = tmp_path_factory.mktemp("execution-rate")
    with pytest.MonkeyPatch.context() as env:     # the autouse planted key is per test; this fixture is per module
        env.setenv("ANTHROPIC_API_KEY", "sk-ant-planted-secret")
        return {"on": execute(root, True), "off": execute(root, False)}


def by_marker(layout: RunLayout) -> dict[str, dict]:
    """Per idea, from the files only: implement.json, the attempt records, result.json."""
    rows = {}
    for view in load_state(layout).candidates.values():
        cand = layout.candidate(view.cid)
        result = json.loads(cand.result.read_text()) if cand.result.exists() else None
        rows[view.idea.split(":")[0]] = dict(
            cid=view.cid, implement=json.loads(cand.implement.read_text()), result=result,
            attempts=[json.loads(p.read_text())["status"] for p in sorted(cand.implement_dir.glob("s*r*.json"))])
    return rows


@pytest.mark.slow
def test_without_preflight_a_diff_failing_its_quick_check_goes_to_the_cluster(runs) -> None:
    on, off = by_marker(runs["on"]), by_marker(runs["off"])
    # preflight on: the quick check refuses QCONLY and SYNTAX before launch; REVISE runs its revision
    assert on["QCONLY"]["implement"]["status"] == "failed" and on["QCONLY"]["result"] is None
    assert "no quick checks" in on["QCONLY"]["implement"]["reason"]
    assert on["SYNTAX"]["result"] is None and set(on["SYNTAX"]["attempts"]) == {"preflight_failed"}
    assert on["REVISE"]["attempts"] == ["preflight_failed", "applied"] and on["REVISE"]["result"]["status"] == "ok"
    assert on["GOOD"]["implement"]["preflight"] == "passed"
    # preflight off: the first diff that applies is launched, whatever it does; nothing is quick-checked
    assert all("preflight_failed" not in row["attempts"] for row in off.values())
    assert off["QCONLY"]["implement"]["preflight"] == "skipped" and off["QCONLY"]["result"]["status"] == "ok"
    assert off["QCONLY"]["result"]["job_id"], "the candidate that fails its quick check went to the cluster"
    assert off["SYNTAX"]["result"]["status"] == "failed" and off["SYNTAX"]["implement"]["revision"] == 0
    assert off["REVISE"]["result"]["status"] == "failed" and off["REVISE"]["implement"]["revision"] == 0
    assert "broken at import" in (runs["off"].candidate(off["REVISE"]["cid"]).root / "worker.log").read_text() \
        or "broken at import" in off["REVISE"]["result"]["log_tail"]
    for rows in (on, off):
        assert rows["GOOD"]["result"]["status"] == "ok" and rows["NODIFF"]["result"] is None


def disk_rates(rows: dict[str, dict]) -> tuple[float, float]:
    """(measured, paper) from the files: valid = ok with a non-zero reward; the paper's count also needs the
    first diff that applied to have been launched (no attempt that applied but failed the preflight)."""
    valid = {m for m, r in rows.items() if r["result"] and r["result"]["status"] == "ok" and r["result"]["reward"]}
    paper = {m for m in valid if "preflight_failed" not in rows[m]["attempts"]}
    return len(valid) / len(rows), len(paper) / len(rows)


@pytest.mark.slow
def test_report_shows_the_measured_and_the_paper_execution_rate(runs, tmp_path) -> None:
    out = tmp_path / "report"
    build_report(runs["on"].root, out, [runs["off"].root])
    funnel = pd.read_csv(out / "funnel.csv").set_index("run")
    on, off = funnel.loc["preflight-on"], funnel.loc["preflight-off"]
    assert disk_rates(by_marker(runs["on"])) == (0.4, 0.2)      # GOOD and REVISE ran; only GOOD's first diff did
    assert (on["preflight"], on["execution_rate"], on["paper_execution_rate"]) == ("on", 0.4, 0.2)
    assert disk_rates(by_marker(runs["off"])) == (0.4, 0.4)     # GOOD and QCONLY; nothing was revised for a check
    assert (off["preflight"], off["execution_rate"], off["paper_execution_rate"]) == ("off", 0.4, 0.4)
    ideas = pd.read_csv(out / "ideas.csv").set_index(["run", "cid"])
    rows = by_marker(runs["on"])
    assert bool(ideas.loc[("preflight-on", rows["REVISE"]["cid"]), "valid"])
    assert not bool(ideas.loc[("preflight-on", rows["REVISE"]["cid"]), "paper_valid"])
    comparison = pd.read_csv(out / "comparison.csv").set_index("run")
    assert comparison.loc["preflight-on", "paper_execution_rate"] == 0.2
    page = {r["run"]: r for r in Tables((out / "index.html").read_text()).rows("funnel")}
    assert (page["preflight-on"]["execution_rate"], page["preflight-on"]["paper_execution_rate"]) == ("40%", "20%")
    assert page["preflight-off"]["paper_execution_rate"] == "40%"
