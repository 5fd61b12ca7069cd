"""`toolkit report RL_DIR`: the paper's RL analyses, from a real tiny GRPO run (the toy env, the debug cluster, the
hashing fake implementer of test_rl) and from step records written by hand where the answer must be known; the
page rendered in headless Chromium (screenshot kept in tests/artifacts/)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from helpers import copy_env
from test_report import ARTIFACTS, CHROMIUM, Tables, chromium, just_started_run
from test_rl import hashed_implementer, start
from toolkit.cli import build_parser
from toolkit.config import SearchRunConfig, to_dict
from toolkit.errors import ConfigError
from toolkit.report.page import fmt
from toolkit.report.tables import clusters, jaccard, word_set
from toolkit.rl.config import RLConfig, save_rl_config
from toolkit.rl.grpo import group_advantages
from toolkit.rl.layout import RLLayout
from toolkit.rl.report import build_rl_report, is_rl_dir
from toolkit.rl.rewards import Reward
from toolkit.rl.sampling import Rollout
from toolkit.testing.fake_llm import FakeLLMServer

STEPS = 3


def toolkit(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def rl_dir(tmp_path_factory) -> RLLayout:
    """Three GRPO steps of six rollouts, with the novelty bonus on (so shaped and env rewards differ)."""
    tmp = tmp_path_factory.mktemp("rl-report")
    env_dir = copy_env(tmp / "toy")
    with pytest.MonkeyPatch.context() as mp, FakeLLMServer(hashed_implementer(env_dir / "code")) as server:
        mp.setenv("ANTHROPIC_API_KEY", "sk-ant-planted-secret")    # module scope: before conftest's autouse
        layout = start(tmp, server, env_dir, {"cluster": "debug"}, "rl", steps=STEPS,
                       mitigations={"novelty_bonus": 0.1})
    assert toolkit("report", str(layout.root)) == 0
    return layout


def records(layout: RLLayout, step: int) -> list[dict[str, Any]]:
    """A step's rollouts beside their rewards, read without the report's code."""
    rollouts = json.loads(layout.step(step).rollouts.read_text())["rollouts"]
    rewards = json.loads(layout.step(step).rewards.read_text())
    return [{**ro, **re} for ro, re in zip(rollouts, rewards, strict=True)]


def csv(layout: RLLayout, name: str) -> pd.DataFrame:
    return pd.read_csv(layout.report / f"{name}.csv")


# ---- a real run ----------------------------------------------------------------------------------------------
def test_steps_table_matches_the_step_records_and_the_trainer_log(rl_dir: RLLayout) -> None:
    steps = csv(rl_dir, "steps").set_index("step")
    logged = {row["step"]: row for row in map(json.loads, rl_dir.metrics.read_text().splitlines())}
    assert list(steps.index) == list(range(1, STEPS + 1))
    for n in steps.index:
        rows, got = records(rl_dir, n), steps.loc[n]
        ideas = [r for r in rows if r["idea"] is not None]
        executed = [r for r in rows if r["status"] == "ok" and r["env"] != 0]
        assert (got["rollouts"], got["ideas"], got["executed"]) == (len(rows), len(ideas), len(executed))
        assert got["rollout_execution_rate"] == pytest.approx(len(executed) / len(rows))
        assert got["reward_mean"] == pytest.approx(sum(r["env"] for r in rows) / len(rows))
        assert got["reward_max"] == pytest.approx(max(r["env"] for r in rows))
        assert got["shaped_mean"] == pytest.approx(sum(r["total"] for r in rows) / len(rows))
        assert got["thinking_tokens_mean"] == pytest.approx(sum(r["thinking_tokens"] for r in rows) / len(rows))
        assert got["idea_tokens_mean"] == pytest.approx(sum(r["idea_tokens"] for r in ideas) / len(ideas))
        for column in ("reward_mean", "reward_max", "shaped_mean", "thinking_tokens_mean", "idea_tokens_mean",
                       "distinct_ideas", "top_idea_share", "mean_jaccard"):
            assert got[column] == pytest.approx(logged[n][column]), (n, column)
        assert got["rollout_execution_rate"] == pytest.approx(logged[n]["exec_rate"])
    assert (steps["shaped_mean"] > steps["reward_mean"]).any(), "the novelty bonus was paid"
    before = [word_set(r["idea"]) for r in records(rl_dir, 1) if r["idea"] is not None]
    after = [word_set(r["idea"]) for r in records(rl_dir, 2) if r["idea"] is not None]
    expected = sum(max(jaccard(a, b) for b in before) for a in after) / len(after)
    assert pd.isna(steps.loc[1, "jaccard_to_previous"])
    assert steps.loc[2, "jaccard_to_previous"] == pytest.approx(expected)


def test_rollouts_terciles_and_repeats_account_for_every_rollout(rl_dir: RLLayout) -> None:
    rollouts = csv(rl_dir, "rollouts")
    on_disk = [r for n in range(1, STEPS + 1) for r in records(rl_dir, n)]
    assert list(rollouts["idea_id"]) == [r["idea_id"] for r in on_disk]
    assert list(rollouts["reward"]) == pytest.approx([r["env"] for r in on_disk])
    assert list(rollouts["advantage"]) == pytest.approx([r["advantage"] for r in on_disk])
    thinking = csv(rl_dir, "thinking")
    assert 1 <= len(thinking) <= 3 and thinking["rollouts"].sum() == len(on_disk)
    assert thinking["executed"].sum() == sum(r["status"] == "ok" and r["env"] != 0 for r in on_disk)
    assert list(thinking["rollout_execution_rate"]) == pytest.approx(list(thinking["executed"] / thinking["rollouts"]))
    counts = rollouts[rollouts["same_idea"] > 0]["same_idea"].value_counts()
    repeated = csv(rl_dir, "repeated").set_index("same_idea")
    assert list(repeated.index) == [k for k in range(1, 11) if counts.get(k, 0) > 1]
    assert all(repeated.loc[k, "ideas"] == counts[k] for k in repeated.index)
    assert list(repeated["ideas"]) == sorted(repeated["ideas"], reverse=True)
    by_step = csv(rl_dir, "repeated_by_step").set_index("step")
    shown = by_step.drop(columns=["ideas"]).sum(axis=1)
    assert list(shown) == list(by_step["ideas"]) == [sum(r["idea"] is not None for r in records(rl_dir, n))
                                                    for n in by_step.index]


def test_page_shows_the_tables_and_five_figures(rl_dir: RLLayout) -> None:
    html = (rl_dir.report / "index.html").read_text()
    assert "RL report: rl" in html and "novelty_bonus 0.1" in html and f"<b>{STEPS}</b> of {STEPS} steps" in html
    assert sorted(p.name for p in (rl_dir.report / "plots").glob("*.png")) == \
        ["diversity.png", "lengths.png", "repeated.png", "reward.png", "thinking.png"]
    assert len(re.findall(r'<img id="plot-\w+"', html)) == 5
    page, steps = Tables(html), csv(rl_dir, "steps")
    assert [row["reward_mean"] for row in page.rows("steps")] == [fmt("reward_mean", v) for v in steps["reward_mean"]]
    assert ([row["rollout_execution_rate"] for row in page.rows("steps")]
            == [fmt("rate", v) for v in steps["rollout_execution_rate"]])
    assert len(page.rows("thinking")) == len(csv(rl_dir, "thinking"))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_rl_page_renders_in_headless_chromium(rl_dir: RLLayout, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_rl.png"
    shot.unlink(missing_ok=True)
    page = rl_dir.report / "index.html"
    dom, log = chromium(page, tmp_path, "--dump-dom")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images-ok="5"' in body and 'data-images-broken="0"' in body, body
    for table_id in ("steps", "thinking", "repeated", "repeated_by_step"):
        assert f'<table id="{table_id}">' in dom
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    _, log = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,4200")
    assert "CONSOLE" not in log
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


# ---- step records with a known answer -------------------------------------------------------------------------
LN, EMA = "Use LayerNorm instead of RMSNorm", "Add an EMA of the weights"
KNOWN = {   # step -> (idea or None, thinking tokens, executed)
    1: [(LN, 500, True), (EMA, 480, False), ("Raise the learning rate to 0.3", 460, False),
        ("Cosine decay of the learning rate", 440, False), (None, 1000, False)],
    2: [(LN, 300, True), ("use layernorm instead of rmsnorm now", 320, True), (EMA, 340, True),
        ("Dropout 0.1 after attention", 360, False), ("Warm up for 200 steps", 380, False)],
    3: [(LN, 100, True), (LN, 120, True), (LN, 140, True), (EMA, 160, True), (EMA, 180, True)],
}


def write_step(layout: RLLayout, n: int, plan: list[tuple[str | None, int, bool]]) -> None:
    """The step's records as the trainer writes them: rollouts.json, then rewards.json after the update."""
    rollouts = [Rollout(k, f"r{k:04d}", (1,), (1,), "thinking", idea, tokens, 5 if idea else 0, idea is not None)
                for k, (idea, tokens, _) in enumerate(plan)]
    rewards = [Reward(env=float(n) if ran else 0.0, status="ok" if ran else ("failed" if idea else ""))
               for idea, _, ran in plan]
    advantages = group_advantages([r.total for r in rewards])
    paths = layout.step(n)
    paths.root.mkdir(parents=True)
    paths.rollouts.write_text(json.dumps({"prompt_ids": [1], "rollouts": [dataclasses.asdict(r) for r in rollouts]}))
    paths.rewards.write_text(json.dumps([{"idea_id": ro.idea_id, **dataclasses.asdict(re), "total": re.total,
                                          "advantage": a} for ro, re, a in zip(rollouts, rewards, advantages)]))


@pytest.fixture
def known(tmp_path: Path) -> RLLayout:
    layout = RLLayout(tmp_path / "rl")
    save_rl_config(layout.config, RLConfig(steps=5))
    for n, plan in KNOWN.items():
        write_step(layout, n, plan)
    layout.step(4).root.mkdir()          # the trainer is sampling step 4: no rewards yet
    layout.step(4).rollouts.write_text(json.dumps({"prompt_ids": [1], "rollouts": []}))
    return layout


def test_most_repeated_ideas_are_counted_across_steps(known: RLLayout) -> None:
    build_rl_report(known.root)
    repeated = csv(known, "repeated").set_index("same_idea")
    ln, ema = repeated.loc[1], repeated.loc[2]
    assert ln["idea"] == LN and (ln["ideas"], ln["steps"], ln["first_step"], ln["last_step"]) == (6, 3, 1, 3)
    assert (ln["in_last_step"], ln["last_step_share"], ln["share"]) == (3, 0.6, pytest.approx(6 / 14))
    assert ema["idea"] == EMA and (ema["ideas"], ema["in_last_step"]) == (4, 2)
    assert ln["rollout_execution_rate"] == 1.0 and ema["rollout_execution_rate"] == 0.75
    assert ema["reward_mean"] == pytest.approx(2.0)
    assert list(repeated["ideas"]) == [6, 4]               # an idea proposed once is not repeated
    by_step = csv(known, "repeated_by_step").set_index("step")
    assert list(by_step["ideas"]) == [4, 5, 5]
    assert list(by_step["idea_1"]) == [1, 2, 3] and list(by_step["idea_2"]) == [1, 1, 2]
    assert list(by_step["others"]) == [2, 2, 0]


def test_jaccard_over_steps_and_thinking_terciles(known: RLLayout) -> None:
    build_rl_report(known.root)
    steps = csv(known, "steps").set_index("step")
    cross = jaccard(word_set(LN), word_set(EMA))
    assert cross == pytest.approx(1 / 10)
    assert steps.loc[3, "mean_jaccard"] == pytest.approx((4 * 1.0 + 6 * cross) / 10)
    assert (steps.loc[3, "distinct_ideas"], steps.loc[3, "top_idea_share"]) == (2, 0.6)
    assert steps.loc[3, "jaccard_to_previous"] == 1.0           # every idea of step 3 was proposed in step 2
    assert steps.loc[2, "distinct_ideas"] == 4                  # the two LayerNorm phrasings are one idea
    assert list(steps["thinking_tokens_mean"]) == [576.0, 340.0, 140.0]
    thinking = csv(known, "thinking")
    assert list(thinking["thinking_tokens"]) == ["100-180", "300-380", "440-1000"]
    assert list(thinking["rollouts"]) == [5, 5, 5] and list(thinking["rollout_execution_rate"]) == [1.0, 0.6, 0.2]
    words = " ".join((known.report / "index.html").read_text().split())
    assert ">stopped<" in words and "not counted: step 4)" in words and "<b>3</b> of 5 steps" in words


def test_an_rl_dir_before_its_first_step(tmp_path: Path) -> None:
    layout = RLLayout(tmp_path / "rl")
    save_rl_config(layout.config, RLConfig())
    assert is_rl_dir(layout.root) and toolkit("report", str(layout.root)) == 0
    assert csv(layout, "steps").empty and csv(layout, "rollouts").empty and csv(layout, "repeated").empty
    assert "<b>0</b> of 10 steps" in (layout.report / "index.html").read_text()
    assert len(list((layout.report / "plots").glob("*.png"))) == 5


def test_report_command_tells_rl_and_search_runs_apart(tmp_path: Path, known: RLLayout) -> None:
    with pytest.raises(ConfigError, match="RL directory: --compare and --judge-llm apply to search runs"):
        toolkit("report", str(known.root), "--compare", str(tmp_path))
    search = just_started_run(tmp_path / "search")
    (search / "config.yaml").write_text(yaml.safe_dump(to_dict(SearchRunConfig())))   # a search's own config
    assert not is_rl_dir(search) and not is_rl_dir(tmp_path / "nothing")
    assert toolkit("report", str(search)) == 0
    assert "Search report: search" in (search / "report" / "index.html").read_text()


def test_clusters_keep_members_in_order() -> None:
    sets = [word_set(t) for t in (LN, EMA, LN, "use layernorm instead of rmsnorm now", "longer warmup", EMA)]
    assert clusters(sets, 0.7) == [[0, 2, 3], [1, 5], [4]]
    assert clusters(sets, 1.0) == [[0, 2], [1, 5], [3], [4]]
    assert clusters([], 0.7) == []
