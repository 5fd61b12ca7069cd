"""Certified results: the statistics (pure, with a false-certification sweep) and a real search on the local
executor whose no-op, harmful and real changes get the verdicts they deserve."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from rich.console import Console

from helpers import FIXTURES, copy_env, make_diff
from toolkit.config import SearchRunConfig, from_dict
from toolkit.layout import RunLayout
from toolkit.loop import run_search
from toolkit.search.certify import interleave, judge, noise_floor, nominees, one_sided_p
from toolkit.state import CandidateView
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

NOISY_ENV = FIXTURES / "noisy_env"


def runs(values: list[float], status: str = "ok") -> list[CandidateView]:
    return [CandidateView(cid=f"c~s{i}", status=status, metric=v, reward=1 / v) for i, v in enumerate(values)]


# ---- statistics -------------------------------------------------------------------------------------------
def test_verdicts() -> None:
    base = [1.00, 1.04, 0.97]
    assert judge(runs([0.70, 0.72, 0.69]), base, "minimize", 0.01, 0.0).verdict == "certified"
    assert judge(runs([0.99, 1.03, 0.98]), base, "minimize", 0.01, 0.0).verdict == "not significant"
    assert judge(runs([1.30, 1.32, 1.29]), base, "minimize", 0.01, 0.0).verdict == "not significant"
    assert judge(runs([1.30, 1.32, 1.29]), base, "maximize", 0.01, 0.0).verdict == "certified"
    # a real but small gain is not certified once a minimum effect larger than it is asked for
    assert judge(runs([0.90, 0.91, 0.89]), base, "minimize", 0.01, 0.2).verdict == "not significant"
    failed = judge(runs([0.7, 0.7]) + runs([1.0], "invalid"), base, "minimize", 0.01, 0.0)
    assert failed.verdict == "unreproducible" and "invalid" in failed.reason
    assert judge(runs([0.7]), base, "minimize", 0.01, 0.0).verdict == "unreproducible"
    # the same metric for every seed while the baseline varies: a fixed (lucky) seed, not a result
    fixed = judge(runs([0.8, 0.8, 0.8]), base, "minimize", 0.01, 0.0)
    assert fixed.verdict == "unreproducible" and "TOOLKIT_SEED" in fixed.reason
    # a deterministic environment (no spread anywhere): the difference itself decides
    assert one_sided_p([0.5, 0.5], [0.6, 0.6], "minimize", 0.0) == 0.0
    assert one_sided_p([0.6, 0.6], [0.6, 0.6], "minimize", 0.0) == 1.0
    v = judge(runs([0.70, 0.72, 0.69]), base, "minimize", 0.01, 0.0)
    assert v.low < v.mean < v.high and v.n == 3 and 0 <= v.p_value < 0.01


def test_noise_floor_flags_an_env_that_ignores_the_seed() -> None:
    assert noise_floor([2.0, 2.0, 2.0], [0.5] * 3).seed_ignored
    floor = noise_floor([2.0, 2.1, 1.9], [0.5, 0.47, 0.52])
    assert not floor.seed_ignored and floor.sd == pytest.approx(0.1) and floor.n == 3


def test_interleave_spreads_the_baseline_runs() -> None:
    order = interleave([f"c{i}" for i in range(15)], ["b0", "b1", "b2"])
    positions = [order.index(b) for b in ("b0", "b1", "b2")]
    assert sorted(order) == sorted([f"c{i}" for i in range(15)] + ["b0", "b1", "b2"])
    assert positions[0] == 0 and positions[1] >= 5 and positions[2] >= 11


def test_nominees_are_the_best_untested_screened_candidates() -> None:
    views = {c.cid: c for c in [
        CandidateView("baseline", status="ok", reward=1.0),
        CandidateView("a", status="ok", reward=1.5), CandidateView("b", status="ok", reward=1.2),
        CandidateView("c", status="ok", reward=0.9), CandidateView("d", status="failed"),
        CandidateView("e", status="ok", reward=1.4, cert_round=0),
        CandidateView("f", status="ok", reward=2.0, duplicate_of="a")]}
    assert nominees(views, 1.0, 5) == ["a", "b"]
    assert nominees(views, 1.0, 1) == ["a"]


def false_certification_rate(draw, trials: int, k: int = 5, pool: int = 50, seed: int = 0) -> float:
    """The search's procedure on no-op candidates: screen `pool`, nominate the top k of those beating the
    baseline's screening run, re-run each 3 times and the baseline 3 times with fresh noise, judge."""
    rng = random.Random(seed)
    certified = tested = 0
    while tested < trials:
        bar = draw(rng)
        screened = sorted(draw(rng) for _ in range(pool))      # minimize: the lucky ones come first
        picked = [s for s in screened if s < bar][:k]
        base = [draw(rng) for _ in range(3)]
        for _ in picked:
            v = judge(runs([draw(rng) for _ in range(3)]), base, "minimize", 0.01, 0.0)
            certified += v.verdict == "certified"
            tested += 1
    return certified / tested


@pytest.mark.parametrize("noise", ["normal", "skewed"])
def test_false_certification_rate_is_consistent_with_alpha(noise: str) -> None:
    """10,000 no-op candidates, nominated for their lucky screening runs: certified at most at rate alpha
    (plus three binomial standard errors). Skewed: gamma noise (shape 2), like a loss with a long tail."""
    draw = (lambda r: 2.4 + r.gauss(0, 0.02)) if noise == "normal" else (lambda r: 2.4 + 0.02 * r.gammavariate(2, 1))
    rate = false_certification_rate(draw, 10_000)
    print(f"\nfalse-certification rate ({noise} noise, alpha 0.01, 10,000 no-op nominees): {rate:.4f}")
    assert rate <= 0.01 + 3 * (0.01 * 0.99 / 10_000) ** 0.5


def test_a_diff_that_touches_seeding_is_seen() -> None:
    from toolkit.search.certify import seeding_lines

    pinned = make_diff(NOISY_ENV / "code", "train.py", 'SEED = int(os.environ.get("TOOLKIT_SEED", "1337"))', "SEED = 7")
    assert seeding_lines(pinned)
    assert not seeding_lines(make_diff(NOISY_ENV / "code", "train.py", "EFFECT = 0.0 ", "EFFECT = 0.3 "))
    comment = make_diff(NOISY_ENV / "code", "train.py", "NOISE_SD = 0.04", "# seeds matter here\nNOISE_SD = 0.04")
    assert not seeding_lines(comment)                       # a comment about seeds changes no seeding


# ---- a real search --------------------------------------------------------------------------------------
IDEAS = {
    "pin": "Pin SEED to 7, a seed that scored well.",
    "noop": "Add a comment above NOISE_SD explaining it.",
    "harm": "Set EFFECT to -0.5 to make the score worse.",
    "real": "Set EFFECT to 0.3 to make the score better.",
}


def noisy_responder(code: Path, ideas: list[tuple[str, str]]):
    """Ideation hands out `ideas` (marker, text) in order; implementation edits train.py by marker."""
    handed = {"n": 0}

    def diff_for(marker: str) -> str:
        if marker == "harm":
            return make_diff(code, "train.py", "EFFECT = 0.0 ", "EFFECT = -0.5 ")
        if marker == "real":
            return make_diff(code, "train.py", "EFFECT = 0.0 ", "EFFECT = 0.3 ")
        if marker == "pin":   # a lucky seed, hard-coded: the screening run is lucky and so would every re-run be
            return make_diff(code, "train.py", 'SEED = int(os.environ.get("TOOLKIT_SEED", "1337"))', "SEED = 7",
                             "EFFECT = 0.0 ", "EFFECT = 0.2 ")
        number = marker.removeprefix("noop")
        return make_diff(code, "train.py", "NOISE_SD = 0.04",
                         f"# no-op {number}: the spread between seeds\nNOISE_SD = 0.04")

    def respond(request: dict) -> FakeReply:
        prompt = json.dumps(request.get("body", {}))
        if "Reply with ONLY a JSON array" in prompt:
            count = int(re.search(r"JSON array of (\d+) objects", prompt).group(1))
            batch = ideas[handed["n"]: handed["n"] + count]
            handed["n"] += len(batch)
            return FakeReply(text=json.dumps([{"title": f"[{m}]", "description": t} for m, t in batch]))
        marker = re.search(r"\[(noop\d*|harm|real|pin)\]", prompt.split("# The idea to implement")[-1]).group(1)
        return FakeReply(text=diff_for(marker))
    return respond


def noisy_config(tmp_path: Path, base_url: str, ideas: int, **certify) -> SearchRunConfig:
    env = copy_env(tmp_path / "env", NOISY_ENV)
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": base_url + "/v1", "backoff_s": 0.01}
    return from_dict(SearchRunConfig, {
        "env": str(env), "llm": {"ideator": llm, "implementer": llm},
        "implement": {"samples": 1, "revisions": 0, "workers": 4},
        "cluster": {"cluster": "local", "poll_s": 0.3, "lost_grace_s": 10},
        "search": {"epochs": 1, "ideas_per_epoch": ideas, "ideas_per_call": ideas, "dedup": {"method": "off"},
                   "certify": {"top_k": ideas, **certify}}}, "test")


@pytest.mark.slow
def test_search_certifies_the_real_change_only(tmp_path: Path, capsys) -> None:
    ideas = [(m, t) for m, t in IDEAS.items()]
    with FakeLLMServer(noisy_responder(NOISY_ENV / "code", ideas)) as server:
        cfg = noisy_config(tmp_path, server.base_url, 4, budget_share=0.9)
        state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    floor = state.certification.floor
    assert floor is not None and floor.n == 3 and 0 < floor.sd < 0.2 and not floor.seed_ignored
    by_marker = {re.search(r"\[(\w+)\]", v.idea).group(1): v for v in state.candidates.values() if v.cid != "baseline"}
    assert by_marker["real"].verdict == "certified" and by_marker["real"].cert_n == 3
    real = by_marker["real"]
    assert real.cert_low < real.cert_metric < real.cert_high and abs(real.cert_metric - 0.7) < 0.15
    assert by_marker["harm"].verdict != "certified"
    assert by_marker["noop"].verdict != "certified"
    pinned = by_marker["pin"]
    assert pinned.verdict == "unreproducible" and "seeded" in pinned.verdict_reason and pinned.cert_n == 0
    assert not any(v.parent == pinned.cid for v in state.replicas.values())     # no GPU spent on it
    seeds = [v.seed for v in state.replicas.values()]
    assert len(seeds) == len(set(seeds)) and -1 not in seeds          # every replica a fresh seed
    events = [json.loads(line) for line in RunLayout(tmp_path / "run").events.read_text().splitlines()]
    assert [e["epoch"] for e in events if e["kind"] == "epoch_ended"] == [0]       # once, however long the round
    submitted = [e["cid"] for e in events if e["kind"] == "submitted"]
    assert len(submitted) == len(set(submitted)) == len(state.candidates) + len(state.replicas)
    # each replica's code was rebuilt from the snapshot + the candidate's diff, not copied from its run
    real_rid = next(r for r in state.replicas if r.startswith(by_marker["real"].cid))
    code = RunLayout(tmp_path / "run").candidate(real_rid).code
    assert "EFFECT = 0.3" in (code / "train.py").read_text()
    shows_everywhere(tmp_path / "run", by_marker["real"].cid, len(state.replicas), capsys)


def shows_everywhere(run: Path, certified: str, replicas: int, capsys) -> None:
    """`toolkit status`, the report page, its certification tables and the CSV export carry the verdicts."""
    import pandas as pd

    from toolkit import cli
    from toolkit.report.page import build_report

    capsys.readouterr()
    assert cli.main(["status", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "best certified" in shown and "noise floor" in shown and "certified" in shown
    out = build_report(run)
    folder = out.html.parent
    cert = pd.read_csv(folder / "certification.csv")
    assert cert.iloc[0]["cid"] == "baseline" and certified in set(cert["cid"])
    assert cert.set_index("cid").loc[certified, "verdict"] == "certified"
    summary = pd.read_csv(folder / "certification_summary.csv").iloc[0]
    assert summary["certified"] == 1 and summary["certification_hours"] > 0
    assert len(pd.read_csv(folder / "replicas.csv")) == replicas
    ideas = pd.read_csv(out.csv).set_index("cid")
    assert ideas.loc[certified, "verdict"] == "certified" and ideas.loc[certified, "cert_n"] == 3
    assert "best certified" in out.html.read_text()


@pytest.mark.slow
def test_no_op_sweep_through_the_executor(tmp_path: Path) -> None:
    """24 no-op candidates, each re-run with three fresh seeds against interleaved baseline re-runs through
    the real executor: at alpha 0.01 the expected number certified is 0.24; three or more would happen with
    probability 0.002 if the rate were alpha."""
    ideas = [(f"noop{i}", f"Add comment number {i} above NOISE_SD.") for i in range(24)]
    with FakeLLMServer(noisy_responder(NOISY_ENV / "code", ideas)) as server:
        cfg = noisy_config(tmp_path, server.base_url, 24, budget_share=0.9, noise_floor_seeds=1)
        state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    tested = [v for v in state.candidates.values() if v.verdict]
    certified = [v for v in tested if v.verdict == "certified"]
    print(f"\nno-op sweep: {len(certified)}/{len(tested)} certified at alpha 0.01")
    assert len(tested) >= 8 and len(certified) <= 2
    assert all(v.verdict in ("certified", "not significant") for v in tested)
