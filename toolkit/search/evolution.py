"""The evolutionary search: epochs of ideas -> execute pipeline -> results -> next epoch's prompts.

`Search` is a stage of the daemon loop (`toolkit.loop`), ticked after the execute pipeline it feeds: it
registers ideas with the pipeline, plans certification rounds, ends epochs and decides when the search is
finished. It holds the pipeline, it does not extend it. Everything it decides is recorded in the event log
first, so a restart (kill -9 included) rebuilds the same plan and goes on.
"""
from __future__ import annotations

import math
import queue
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from toolkit import fsio
from toolkit.config import SearchRunConfig, to_dict
from toolkit.errors import ConfigError
from toolkit.execute.pipeline import Parts, Pipeline
from toolkit.records import Idea, ImplementOutcome, to_json
from toolkit.search.certify import Certifier
from toolkit.search.dedup import DedupError, DuplicateFinder, Match, openai_embedder
from toolkit.search.ideator import Ideator, Proposal
from toolkit.search.policy import (
    BASELINE_ID,
    Call,
    baseline_bar,
    epoch_calls,
    exemplars,
    explore_sample,
    remaining_calls,
)
from toolkit.state import CandidateView, EventLog, RunState


@dataclass(frozen=True)
class Batch:
    """One ideation call's outcome, handed from the ideation thread to the tick (the single writer)."""
    epoch: int
    call: Call
    proposal: Proposal
    duplicates: tuple[Match | None, ...] = ()    # per idea: the earlier idea it near-duplicates
    dedup_error: str = ""


class Search:
    def __init__(self, pipeline: Pipeline, ideator: Ideator) -> None:
        self.pipe = pipeline
        self.ideator = ideator
        self.cfg: SearchRunConfig = pipeline.p.cfg  # type: ignore[assignment]
        self.search = self.cfg.search
        self.ideation: Future | None = None
        self.batches: queue.Queue[Batch] = queue.Queue()
        self.ideation_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ideate")
        pipeline.stopping = self.budget_reason    # no new implementation or submission once a budget is spent
        self.certifier = Certifier(self.cfg, pipeline.p.spec, pipeline.p.layout, pipeline.log)
        self.finder = make_finder(self.search.dedup)

    # what the search reads of the pipeline it feeds
    @property
    def log(self) -> EventLog:
        return self.pipe.log

    @property
    def state(self) -> RunState:
        return self.pipe.state

    @property
    def p(self) -> Parts:
        return self.pipe.p

    @property
    def epoch(self) -> int:
        return self.pipe.epoch

    def clock(self) -> float:
        return self.pipe.clock()

    # ---- the tick (after the pipeline's) -----------------------------------------------------------------
    def tick(self) -> float:
        """Returns 0 when it gave the pipeline new work (ideas, replica codebases), so the loop ticks again at
        once; otherwise the loop sleeps on the pipeline's clock (the ideation thread wakes it)."""
        before = len(self.state.candidates) + len(self.state.replicas)
        self.start_search()
        self.reap_ideation()
        self.drain_ideas()
        self.check_budget()
        if not self.budget_reason():
            self.ideate()
        self.certifier.build_dirs()
        self.certifier.judge_rounds()
        self.maybe_end_epoch()
        grew = len(self.state.candidates) + len(self.state.replicas) > before
        return 0.0 if grew else math.inf

    def start_search(self) -> None:
        if self.state.search.started:
            return
        self.log.emit("search_started", search=to_dict(self.search), replay=self._replaying())
        if self.search.run_baseline:
            self.drop_baseline()
            self.certifier.plan_floor()
        self.begin_epoch(0)

    def _replaying(self) -> bool:
        return self.cfg.llm.ideator.provider == "replay" or self.cfg.llm.implementer.provider == "replay"

    def drop_baseline(self) -> None:
        """The unchanged codebase as a candidate, scheduled like any other (the run dir is the hand-off)."""
        paths = self.p.layout.candidate(BASELINE_ID)
        if BASELINE_ID not in self.state.candidates:  # known before its directory appears: it is ours
            self.log.emit("idea", idea_id=BASELINE_ID, text="Baseline: the unchanged codebase.", epoch=0,
                          origin="baseline", thinking_tokens=0)
        if paths.ready.exists():
            return
        staging = paths.root.parent / f".building-{BASELINE_ID}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.p.spec.code_dir, staging / "code", symlinks=True)
        idea = Idea(idea_id=BASELINE_ID, text="Baseline: the unchanged codebase.", epoch=0, origin="baseline")
        fsio.atomic_write_json(staging / "idea.json", to_json(idea))
        fsio.atomic_write_json(staging / "implement.json", to_json(ImplementOutcome(cid=BASELINE_ID, status="ready")))
        fsio.atomic_write_text(staging / "READY", "")
        shutil.rmtree(paths.root, ignore_errors=True)
        staging.rename(paths.root)

    # ---- epochs ----------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        have = bool(exemplars(self.state.candidates, 1, epoch, self.state.certification.floor))
        plan = [[c.mode, c.count] for c in epoch_calls(self.search, epoch, have)]
        self.log.emit("epoch_started", epoch=epoch, plan=plan)

    def epoch_views(self, epoch: int) -> list[CandidateView]:
        return [v for v in self.state.candidates.values() if v.epoch == epoch]

    def ideas_left(self) -> list[Call]:
        plan = [Call(m, n) for m, n in self.state.search.plan]
        done: dict[str, int] = {}
        for view in self.epoch_views(self.epoch):
            done[view.origin] = done.get(view.origin, 0) + 1
        return remaining_calls(plan, done)

    def ideation_exhausted(self) -> bool:
        return self.state.search.ideation_failures.get(self.epoch, 0) >= self.search.max_ideation_failures

    def maybe_end_epoch(self) -> None:
        if self.state.search.finished or self.ideation is not None or not self.batches.empty():
            return
        if self.epoch in self.state.search.epochs_ended:
            return self.after_ended_epoch()
        if self.ideas_left() and not self.ideation_exhausted() and not self.budget_reason():
            return
        views = self.epoch_views(self.epoch)
        complete = all(v.terminal for v in views) and not self.pipe.inflight
        deadline = self.search.epoch_deadline_min * 60
        started_at = self.state.search.epoch_started_at
        late = deadline > 0 and started_at is not None and self.clock() - started_at > deadline
        if self.budget_reason() and not self.pipe.pending_jobs() and not self.pipe.inflight:
            return self.finish(f"budget: {self.budget_reason()}")
        if not (complete or late):
            return
        self.log.emit("epoch_ended", epoch=self.epoch, reason="complete" if complete else "deadline",
                      outstanding=sum(1 for v in views if not v.terminal))
        self.after_ended_epoch()

    def done(self) -> bool:
        """Every run has its outcome and every certification round its verdicts."""
        return self.pipe.done() and not self.certifier.busy()

    def after_ended_epoch(self) -> None:
        """Once the epoch has ended (now, or before a restart between `epoch_ended` and the next
        `epoch_started`): its certification round, then the next epoch; the last one waits for late results
        and its round's verdicts."""
        if self.budget_reason() and not self.pipe.pending_jobs() and not self.pipe.inflight:
            return self.finish(f"budget: {self.budget_reason()}")
        last = self.epoch + 1 >= self.search.epochs or bool(self.budget_reason())
        self.certifier.after_epoch(self.epoch, last)
        if not last:
            self.begin_epoch(self.epoch + 1)
        elif self.done():
            self.finish("all epochs done")

    def finish(self, reason: str) -> None:
        self.log.emit("search_finished", reason=reason)

    def finished(self) -> bool:
        """Finished once the last epoch ended and every submitted job has its result (late ones too)."""
        if self.state.search.finished:
            return not self.pipe.pending_jobs() and not self.pipe.inflight
        ended = self.state.search.epochs_ended
        if ended and ended[-1] == self.search.epochs - 1 and self.done():
            self.finish("all epochs done")
            return True
        return False

    # ---- ideation (one background call at a time; results are registered by the tick) -------------------
    def reap_ideation(self) -> None:
        if self.ideation is not None and self.ideation.done():
            self.ideation.result()  # re-raise bugs from the thread
            self.ideation = None

    def ideate(self) -> None:
        if self.ideation is not None or self.ideation_exhausted():
            return
        calls = self.ideas_left()
        if calls:
            self.ideation = self.ideation_pool.submit(self._ideate_call, self.epoch, calls[0], self._context(calls[0]))
            self.ideation.add_done_callback(lambda _: self.pipe.wake.set())

    def _context(self, call: Call) -> dict[str, Any]:
        views = self.state.candidates
        if call.mode == "exploit":
            shown = exemplars(views, self.search.exploit_exemplars, self.epoch, self.state.certification.floor)
        elif call.mode == "explore":
            shown = explore_sample(views, self.search.explore_samples, self.search.seed * 1000 + self.epoch, self.epoch)
        else:
            shown = []
        avoid = [v.idea for v in self.epoch_views(self.epoch) if v.cid != BASELINE_ID]
        earlier = [(v.cid, v.idea) for v in views.values() if v.cid != BASELINE_ID and not v.duplicate_of]
        return dict(exemplars=shown, avoid=avoid, baseline=baseline_bar(views, self.state.certification.floor),
                    earlier=earlier)

    def _ideate_call(self, epoch: int, call: Call, context: dict[str, Any]) -> None:
        """In the ideation thread: the LLM call, then the near-duplicate check (which may call an embeddings
        endpoint); the tick registers both."""
        tag = f"e{epoch}:{len(context['avoid'])}"
        proposal = self.ideator.propose(call, context["exemplars"], context["avoid"], context["baseline"], tag,
                                        self.search.thinking_budget(epoch))
        self._keep_call(f"e{epoch:02d}-{len(context['avoid']):03d}-{call.mode}", proposal)
        try:
            found = self.duplicates(list(proposal.ideas), context["earlier"])
        except DedupError as exc:   # the check is a saving, never a reason to lose ideas
            found, error = (), str(exc)
        else:
            error = ""
        self.batches.put(Batch(epoch, call, proposal, found, error))

    def _keep_call(self, name: str, proposal: Proposal) -> None:
        """The prompt and the response of every ideation call, beside the ideas (as the implementer keeps its)."""
        stem = self.p.layout.ideation_calls / f"{name}-{int(time.time() * 1000)}"
        fsio.atomic_write_text(stem.with_suffix(".prompt.md"), proposal.prompt)
        failed = f"[{proposal.status}] {proposal.reason}\n"
        reply = proposal.response if proposal.status == "ok" else failed + proposal.response
        fsio.atomic_write_text(stem.with_suffix(".response.md"), reply)

    def duplicates(self, texts: list[str], earlier: list[tuple[str, str]]) -> tuple[Match | None, ...]:
        """Each new idea against every earlier idea of the search, and against those before it in the batch."""
        if self.finder is None:
            return ()
        seen, found = list(earlier), []
        for i, text in enumerate(texts):
            found.append(self.finder.find(text, seen))
            seen.append((f"#{i}", text))
        return tuple(found)

    def drain_ideas(self) -> None:
        while not self.batches.empty():
            batch = self.batches.get()
            if batch.proposal.status != "ok":
                self.log.emit("ideation_failed", epoch=batch.epoch, mode=batch.call.mode, reason=batch.proposal.reason)
                continue
            if batch.dedup_error:
                self.log.emit("dedup_failed", epoch=batch.epoch, reason=batch.dedup_error[:2000])
            ideas = self._ideas(batch)
            self.pipe.add_ideas(ideas, self._links(ideas, batch.duplicates))

    def _links(self, ideas: list[Idea], found: tuple[Match | None, ...]) -> dict[str, dict[str, Any]]:
        """idea id -> how it duplicates an earlier one (the batch's own ideas named by their new ids)."""
        links = {}
        for idea, match in zip(ideas, found):
            if match is not None:
                original = ideas[int(match.original[1:])].idea_id if match.original.startswith("#") else match.original
                links[idea.idea_id] = dict(duplicate_of=original, duplicate_score=round(match.score, 4),
                                           dup_policy=self.search.dedup.policy)
        return links

    def _ideas(self, batch: Batch) -> list[Idea]:
        start = sum(1 for v in self.epoch_views(batch.epoch) if v.cid != BASELINE_ID)
        return [Idea(idea_id=f"e{batch.epoch:02d}-{start + i:03d}", text=text, epoch=batch.epoch,
                     origin=batch.call.mode, thinking_tokens=batch.proposal.thinking_tokens)
                for i, text in enumerate(batch.proposal.ideas)]

    # ---- budgets -----------------------------------------------------------------------------------------
    def gpu_hours_used(self) -> float:
        now = self.clock()
        running = sum(v.gpus * max(0.0, now - v.submitted_at) for v in self.pipe.pending_jobs()) / 3600
        return self.state.gpu_hours + running

    def budget_reason(self) -> str:
        cap = self.cfg.budget.gpu_hours
        if cap and self.gpu_hours_used() >= cap:
            return f"GPU-hours cap {cap} reached"
        if self.p.meter.exhausted():
            return f"LLM spend cap ${self.p.meter.cap_usd} reached"
        return ""

    def check_budget(self) -> None:
        reason = self.budget_reason()
        if reason and self.state.search.stopping != reason:
            self.log.emit("stopping", reason=reason)

    def close(self) -> None:
        self.ideation_pool.shutdown(wait=False, cancel_futures=True)


def make_finder(cfg: Any) -> DuplicateFinder | None:
    """The configured near-duplicate finder (None when off); a missing embeddings key is a config error."""
    if cfg.method == "off":
        return None
    embed = None
    if cfg.method == "embedding":
        try:
            embed = openai_embedder(cfg.base_url or "https://api.openai.com/v1", cfg.embedding_model, cfg.api_key_env)
        except DedupError as exc:
            raise ConfigError(f"search.dedup: {exc}") from exc
    return DuplicateFinder(cfg.method, cfg.threshold or None, embed)
