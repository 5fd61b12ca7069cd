"""Certified results: a reported win is a real win.

A search keeps the best of hundreds of noisy runs, so its best screening score is biased upward (the winner's
curse). A candidate's screening run therefore only nominates it. Certification re-runs the best nominees with
fresh seeds, in one array with re-runs of the unchanged baseline interleaved among them (same partition, same
nodes, same hours: drift cancels), and a one-sided Welch t-test of the re-runs against the baseline's re-runs
gives each a verdict. The screening run never enters the test, so selecting on it biases nothing: for a
candidate whose change cannot matter, the chance of `certified` is at most `alpha`.

Pure statistics first (testable without a cluster), then `Certifier`, which the search daemon calls from its
tick: it plans the noise floor and the rounds as events, builds the replicas' code, and records verdicts.
"""
from __future__ import annotations

import math
import re
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from toolkit import fsio
from toolkit.config import SearchRunConfig
from toolkit.envs import EnvSpec
from toolkit.execute.patching import apply_patch
from toolkit.layout import REPLICA_MARK, RunLayout
from toolkit.state import (
    BASELINE_ID,
    CandidateView,
    EventLog,
    NoiseFloor,
    Round,
    RunState,
    VerdictLabel,
    baseline_reward,
)

CI_LEVEL = 0.95
REPLICA_FAILURES = ("failed", "invalid", "timeout")   # the candidate's own doing; `lost` is the cluster's


# ---- statistics -----------------------------------------------------------------------------------------
def noise_floor(metrics: Sequence[float], rewards: Sequence[float], runs: int | None = None) -> NoiseFloor:
    """The baseline's spread over the `metrics` of its ok runs, out of `runs` (default: as many as metrics)."""
    sd = statistics.stdev(metrics) if len(metrics) > 1 else 0.0
    mean_reward = statistics.fmean(rewards) if rewards else None
    return NoiseFloor(n=len(metrics), mean=statistics.fmean(metrics), sd=sd, mean_reward=mean_reward,
                      seed_ignored=len(metrics) > 1 and sd == 0.0, runs=len(metrics) if runs is None else runs)


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictLabel
    reason: str
    n: int = 0                         # re-runs that ended ok
    mean: float | None = None          # their mean metric
    low: float | None = None           # CI_LEVEL confidence interval of that mean
    high: float | None = None
    reward: float | None = None        # their mean reward
    p_value: float | None = None


def improvement(candidate: float, baseline: float, direction: str) -> float:
    """How much better candidate is than baseline, in metric units (positive = better)."""
    return baseline - candidate if direction == "minimize" else candidate - baseline


def one_sided_p(candidate: Sequence[float], baseline: Sequence[float], direction: str, min_effect: float) -> float:
    """p-value of H0 "the candidate is not better than the baseline by min_effect" (Welch's t-test, scipy).
    With no spread on either side (a deterministic environment) the difference itself decides."""
    from scipy import stats  # imported here: only the daemon's judging step pays for it

    sign = -1.0 if direction == "minimize" else 1.0
    better = [sign * x - min_effect for x in candidate]
    base = [sign * x for x in baseline]
    if statistics.pvariance(better) == 0 and statistics.pvariance(base) == 0:
        return 0.0 if statistics.fmean(better) > statistics.fmean(base) else 1.0
    return float(stats.ttest_ind(better, base, equal_var=False, alternative="greater").pvalue)


def mean_ci(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2 or statistics.stdev(values) == 0:
        return mean, mean
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def judge(reruns: Sequence[CandidateView], baseline: Sequence[float], direction: str, alpha: float,
          min_effect: float, baseline_note: str = "") -> Verdict:
    """The verdict for one candidate from its re-runs (replica views) and the baseline re-runs' metrics."""
    bad = sorted({f"{r.cid}: {r.status}" for r in reruns if r.status in REPLICA_FAILURES})
    if bad:
        return Verdict("unreproducible", f"re-run(s) did not end ok: {'; '.join(bad)}")
    ok = [r for r in reruns if r.status == "ok" and r.metric is not None]
    if len(ok) < 2 or len(baseline) < 2:
        return Verdict("unreproducible", f"{len(ok)} re-run(s) and {len(baseline)} baseline run(s) ended ok; "
                       "a test needs two of each")
    return _tested(ok, baseline, direction, alpha, min_effect, baseline_note)


def _tested(ok: Sequence[CandidateView], baseline: Sequence[float], direction: str, alpha: float,
            min_effect: float, note: str) -> Verdict:
    metrics = [float(r.metric) for r in ok]  # type: ignore[arg-type]
    low, high = mean_ci(metrics)
    mean = statistics.fmean(metrics)
    reward = statistics.fmean(float(r.reward) for r in ok if r.reward is not None)
    if statistics.pvariance(metrics) == 0 and statistics.pvariance(baseline) > 0:
        return Verdict("unreproducible", "every re-run gave the same metric for a different seed while the "
                       "baseline's varied: the candidate ignores TOOLKIT_SEED (a fixed seed cannot be certified)",
                       n=len(ok), mean=mean, low=low, high=high, reward=reward)
    p = one_sided_p(metrics, baseline, direction, min_effect)
    gain = improvement(mean, statistics.fmean(baseline), direction)
    text = (f"re-runs {mean:.4g} [{low:.4g}, {high:.4g}] vs baseline {statistics.fmean(baseline):.4g} "
            f"(n={len(baseline)}{note}): improvement {gain:+.4g}, p={p:.2g}")
    verdict: VerdictLabel = "certified" if p < alpha else "not significant"
    reason = f"{text} < alpha {alpha:g}" if p < alpha else f"{text} >= alpha {alpha:g}"
    return Verdict(verdict, reason, n=len(ok), mean=mean, low=low, high=high, reward=reward, p_value=p)


def interleave(candidate_runs: Sequence[Any], baseline_runs: Sequence[Any]) -> list[Any]:
    """Baseline runs spread evenly through the array, so they run beside the candidates', not all first."""
    out: list[Any] = []
    every = (len(candidate_runs) + len(baseline_runs)) / max(len(baseline_runs), 1)
    queue_c, queue_b = list(candidate_runs), list(baseline_runs)
    while queue_c or queue_b:
        due = queue_b and (not queue_c or len(out) >= every * (len(baseline_runs) - len(queue_b)))
        out.append(queue_b.pop(0) if due else queue_c.pop(0))
    return out


def nominees(views: dict[str, CandidateView], bar: float | None, k: int) -> list[str]:
    """The best screened candidates not yet tested: valid, beating the baseline's screening reward, best first."""
    tested = {v.cid for v in views.values() if v.verdict or v.cert_round >= 0}
    pool = [v for v in views.values() if v.cid != BASELINE_ID and v.cid not in tested and v.valid
            and (bar is None or float(v.reward or 0.0) > bar) and not v.duplicate_of]
    return [v.cid for v in sorted(pool, key=lambda v: (-float(v.reward), v.cid))[:k]]  # type: ignore[arg-type]


SEED_WORD = re.compile(r"seed", re.IGNORECASE)


def seeding_lines(diff: str) -> list[str]:
    """Changed lines of a diff whose code (comments aside) mentions a seed (TOOLKIT_SEED, manual_seed, a seed
    constant). Fresh-seed
    re-runs are the evidence of a certificate, so a candidate that changes how it is seeded (pinning a lucky
    seed) cannot be certified."""
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return [line for line in changed if SEED_WORD.search(line[1:].split("#", 1)[0])]   # code, not comments


def baseline_runs(state: RunState) -> list[CandidateView]:
    """Every run of the unchanged codebase: its screening run, noise-floor runs and interleaved re-runs."""
    base = state.candidates.get(BASELINE_ID)
    return ([base] if base else []) + [v for v in state.replicas.values() if v.parent == BASELINE_ID]


def hours(state: RunState) -> tuple[float, float]:
    """(screening, certification) hours so far, finished runs only."""
    screen = sum(run_hours(v) for v in state.candidates.values() if v.status)
    return screen, sum(run_hours(v) for v in state.replicas.values() if v.status)


def replica_id(cid: str, seed: int) -> str:
    return f"{cid}{REPLICA_MARK}s{seed}"


def run_hours(view: CandidateView) -> float:
    """Cost of a run: GPU-hours, or task-hours for a CPU-only environment (a CPU task counts as one)."""
    return view.wall_s * max(view.gpus, 1) / 3600


# ---- the daemon's side ----------------------------------------------------------------------------------
class Certifier:
    """Plans noise floors and rounds as events (a restart rebuilds the same plan), builds replica code,
    and turns finished rounds into verdicts. Called from Search.tick(); never blocks."""

    def __init__(self, cfg: SearchRunConfig, spec: EnvSpec, layout: RunLayout, log: EventLog) -> None:
        self.cfg, self.c, self.spec, self.layout, self.log = cfg, cfg.search.certify, spec, layout, log

    @property
    def state(self) -> RunState:
        return self.log.state

    @property
    def on(self) -> bool:
        return self.c.enabled and self.cfg.search.run_baseline

    # ---- planning ----------------------------------------------------------------------------------------
    def plan_floor(self) -> None:
        if self.on and self.c.noise_floor_seeds > 1 and not self._floor_runs():
            seeds = self.next_seeds(self.c.noise_floor_seeds - 1)
            runs = [dict(rid=replica_id(BASELINE_ID, s), parent=BASELINE_ID, seed=s) for s in seeds]
            self.log.emit("replicas_planned", purpose="floor", epoch=0, runs=runs, cids=[BASELINE_ID])

    def next_seeds(self, n: int) -> list[int]:
        """Fresh seeds, never used before in this search (the counter lives in the event log)."""
        first = 1 + self.state.certification.seeds_issued
        return list(range(first, first + n))

    def after_epoch(self, epoch: int, last: bool) -> None:
        """A round after an epoch ends (every epoch, or the last one only)."""
        cert = self.state.certification
        if not self.on or cert.stopped or not (self.c.every_epoch or last):
            return
        if epoch in cert.certified_after or any(r.epoch == epoch for r in cert.rounds.values()):
            return                                              # once per epoch, a restart included
        self._nominate(epoch)
        self.log.emit("certify_checked", epoch=epoch)

    def _nominate(self, epoch: int) -> None:
        views = self.state.candidates
        picked = self._without_seed_changes(nominees(views, baseline_reward(views), self.c.top_k))
        fits = self.affordable(len(picked))
        if picked and fits == 0:
            self.log.emit("certify_stopped", reason=f"the certification share of the budget "
                          f"({self.c.budget_share:.0%}) is spent; {len(picked)} nominee(s) left untested")
            return
        if picked:
            self._plan_round(epoch, picked[:fits])

    def _without_seed_changes(self, cids: list[str]) -> list[str]:
        """Nominees whose diff touches seeding get their verdict at once, without re-runs."""
        keep = []
        for cid in cids:
            patch = self.layout.candidate(cid).patch
            lines = seeding_lines(patch.read_text(errors="replace")) if patch.is_file() else []
            if not lines:
                keep.append(cid)
                continue
            self.log.emit("verdict", cid=cid, round=-1, verdict="unreproducible", n=0,
                          reason=f"its diff changes how runs are seeded ({lines[0].strip()[:120]}): fresh-seed "
                                 "re-runs are the evidence of a certificate, so a change to seeding cannot be "
                                 "certified")
        return keep

    def _plan_round(self, epoch: int, cids: list[str]) -> None:
        seeds = self.next_seeds(len(cids) * self.c.seeds + self.c.baseline_seeds)
        cand = [dict(rid=replica_id(c, s), parent=c, seed=s)
                for i, c in enumerate(cids) for s in seeds[i * self.c.seeds:(i + 1) * self.c.seeds]]
        base = [dict(rid=replica_id(BASELINE_ID, s), parent=BASELINE_ID, seed=s)
                for s in seeds[len(cids) * self.c.seeds:]]
        number = len(self.state.certification.rounds)
        self.log.emit("replicas_planned", purpose="certify", round=number, epoch=epoch, cids=cids,
                      runs=interleave(cand, base))


    # ---- the budget share ---------------------------------------------------------------------------------
    def allowance_hours(self) -> float:
        """Certification may use budget_share of the search: of budget.gpu_hours when set, else of the
        planned search (its screening runs at the measured cost of one run)."""
        share = self.c.budget_share
        if self.cfg.budget.gpu_hours:
            return share * self.cfg.budget.gpu_hours
        planned = self.cfg.search.epochs * self.cfg.search.ideas_per_epoch + 1
        return share / (1 - share) * planned * self.run_cost_hours()

    def run_cost_hours(self) -> float:
        """The measured cost of one run (the baseline's, else any ok run's), else the env's time limit."""
        done = [v for v in self.state.runs() if v.status == "ok" and v.wall_s > 0]
        base = [v for v in baseline_runs(self.state) if v.status == "ok" and v.wall_s > 0]
        pick = base or done
        if pick:
            return statistics.fmean(run_hours(v) for v in pick)
        r = self.spec.resources
        return (r.time_min + r.eval_time_min) * 60 * max(r.gpus * r.nodes, 1) / 3600

    def spent_hours(self) -> float:
        """Replicas' hours: finished ones as measured, the rest at the cost of one run."""
        cost = self.run_cost_hours()
        return sum(run_hours(v) if v.status else cost for v in self.state.replicas.values())

    def affordable(self, wanted: int) -> int:
        """How many of `wanted` candidates a round can take within the share (0 = none)."""
        left = self.allowance_hours() - self.spent_hours()
        runs = int(left / max(self.run_cost_hours(), 1e-12)) - self.c.baseline_seeds
        return max(0, min(wanted, runs // self.c.seeds))

    # ---- replica code -------------------------------------------------------------------------------------
    def build_dirs(self) -> None:
        """Each planned replica gets a fresh copy of its code: the pristine snapshot with the candidate's
        diff applied again (never the screening run's directory, which that run could write into)."""
        for view in self.state.replicas.values():
            paths = self.layout.candidate(view.cid)
            if not view.job_id and not view.status and not paths.ready.exists():
                self._build(view)

    def _build(self, view: CandidateView) -> None:
        paths = self.layout.candidate(view.cid)
        staging = paths.root.parent / f".building-{view.cid}"
        shutil.rmtree(staging, ignore_errors=True)
        problem = self._code_into(view.parent, staging / "code")
        if problem:
            shutil.rmtree(staging, ignore_errors=True)
            self.log.emit("result", cid=view.cid, status="failed", reason=f"could not rebuild the code: {problem}",
                          wall_s=0.0)
            return
        fsio.atomic_write_text(staging / "READY", "")
        shutil.rmtree(paths.root, ignore_errors=True)
        staging.rename(paths.root)

    def _code_into(self, parent: str, dest: Any) -> str:
        if parent == BASELINE_ID:
            shutil.copytree(self.spec.code_dir, dest, symlinks=True)
            return ""
        diff = self.layout.candidate(parent).patch
        if not diff.is_file():
            return f"{parent} has no patch.diff to rebuild its code from"
        outcome = apply_patch(diff.read_text(), self.spec.code_dir, dest, self.spec.locked)
        return "" if outcome.status == "applied" else f"{outcome.status}: {outcome.reason}"

    # ---- verdicts -----------------------------------------------------------------------------------------
    def judge_rounds(self) -> None:
        self._record_floor()
        cert = self.state.certification
        for number, rnd in sorted(cert.rounds.items()):
            if number not in cert.judged and all(self.state.replicas[r].terminal for r in rnd.rids):
                self._judge_round(number, rnd)

    def _judge_round(self, number: int, rnd: Round) -> None:
        runs = [self.state.replicas[r] for r in rnd.rids]
        base, note = self._baseline_metrics([r for r in runs if r.parent == BASELINE_ID])
        for cid in rnd.cids:
            v = judge([r for r in runs if r.parent == cid], base, self.spec.direction, self.c.alpha,
                      self.c.min_effect, note)
            self.log.emit("verdict", cid=cid, round=number, **v.__dict__)
        self.log.emit("round_judged", round=number)

    def _baseline_metrics(self, same_round: list[CandidateView]) -> tuple[list[float], str]:
        """The round's own baseline re-runs; if fewer than two ended ok, every ok baseline run so far."""
        ok = [float(r.metric) for r in same_round if r.status == "ok" and r.metric is not None]
        if len(ok) >= 2:
            return ok, ""
        pooled = [float(v.metric) for v in baseline_runs(self.state) if v.status == "ok" and v.metric is not None]
        return pooled, ", all baseline runs: this round's failed"

    def _floor_runs(self) -> list[CandidateView]:
        return [v for v in self.state.replicas.values() if v.purpose == "floor"]

    def _record_floor(self) -> None:
        runs = self._floor_runs()
        base = self.state.candidates.get(BASELINE_ID)
        if self.state.certification.floor is not None or not runs or base is None:
            return
        everyone = [base, *runs]
        ok = [v for v in everyone if v.status == "ok" and v.metric is not None]
        if ok and all(v.terminal for v in everyone):
            metrics = [float(v.metric) for v in ok]  # type: ignore[arg-type]
            floor = noise_floor(metrics, [float(v.reward) for v in ok if v.reward is not None], runs=len(everyone))
            self.log.emit("noise_floor", **floor.__dict__)

    def busy(self) -> bool:
        """A round still waiting for its replicas or its verdicts."""
        return self.state.certification.busy()
