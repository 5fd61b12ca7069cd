"""The execute pipeline: ideas -> implementer -> scheduler -> worker -> collector, as `tick() -> seconds to sleep`.

A stage of the one daemon loop (`toolkit.loop`), which owns the run directory's lock; the pipeline is the
single writer of its event log. A tick never blocks on the LLM or the cluster for long: implementations run
in a thread pool (a finished one sets `wake`, so the loop need not poll for it), jobs run on the cluster, and
each tick only harvests what finished, submits what is ready as one array, collects results and removes the
large outputs of finished runs that the keep policy lets go (toolkit.execute.keep). SLURM is asked for job
states at `poll_s` at most, and less often while nothing changes.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import fsio, pins
from toolkit.cluster.base import Cluster, ClusterError, JobState
from toolkit.cluster.worker import WorkerTask
from toolkit.config import RunConfig
from toolkit.envs import EnvSpec, data_dirs
from toolkit.execute import keep
from toolkit.execute.implementer import Implementer
from toolkit.layout import RunLayout, is_replica
from toolkit.llm.base import SpendMeter
from toolkit.records import Idea, from_json, result_event, to_json
from toolkit.state import CandidateView, EventLog, RunState

SUBMIT_BACKOFF_MAX_S = 600.0       # a failing sbatch (a bad partition, a full queue) is retried at most this rarely
BATCH_WINDOW_S = 2.0               # a ready run waits this long for implementations finishing: one array, not many
POLL_BACKOFF_MAX = 4               # job states unchanged: ask SLURM at poll_s, 2x, 4x poll_s, no less often
FULL_LISTING_S = 60.0

log = logging.getLogger(__name__)


@dataclass
class Parts:
    layout: RunLayout
    cfg: RunConfig
    spec: EnvSpec
    implementer: Implementer
    cluster: Cluster
    meter: SpendMeter


class Pipeline:
    def __init__(self, parts: Parts, clock: Any = time.time) -> None:
        self.p = parts
        self.log = EventLog(parts.layout)
        self.clock = clock
        self.candidates_dir = str(parts.layout.candidates)
        self.replicas_dir = str(parts.layout.replicas)
        self.pool = ThreadPoolExecutor(max_workers=parts.cfg.implement.workers, thread_name_prefix="implement")
        self.inflight: dict[str, Future] = {}
        self.finished_seen: dict[str, float] = {}
        self.malformed_seen: dict[str, float] = {}
        self.listing: tuple[int, float] = (-1, 0.0)   # (mtime of candidates/, when it was last listed)
        self.unresolved: set[str] = set()
        self.just_submitted: set[str] = set()
        self.stopping: Any = lambda: False   # a budget hook: when true no new work starts, running work finishes
        self.cluster_due_at = 0.0   # when the collector may next ask the cluster for job states
        self.poll_interval_s = parts.cfg.cluster.poll_s   # grows while the answers do not change
        self.last_states: dict[str, str] = {}
        self.ready_seen: dict[str, float] = {}   # when each run was first seen ready (the batch window)
        self.batch_due_at = 0.0
        self.wake = threading.Event()   # set when an implementation finishes: the loop need not poll for it
        self.submit_due_at = 0.0    # after a failed sbatch: when to try again (exponential backoff)
        self.submit_failures = 0
        self.ignored: set[str] = set()
        self.pin_inputs()

    @property
    def state(self) -> RunState:
        return self.log.state

    # ---- pinned inputs --------------------------------------------------------------------------------
    def input_trees(self) -> dict[str, Path]:
        public, hidden = data_dirs(self.p.cfg.data_dir, self.p.spec.name)
        return {"snapshot": self.p.layout.env_dir, "data": public, "hidden": hidden}

    def pin_inputs(self) -> None:
        """First start: hash the snapshot and the data into the log. A restart: check them against it."""
        pinned = self.state.pins
        if pinned is None:
            self.log.emit("pinned", pins={k: pins.pin_tree(p) for k, p in self.input_trees().items()})
            return
        self._raise_if_changed(pins.verify(pinned, self.input_trees()))

    def check_snapshot(self) -> None:
        """Once a tick, before anything is implemented or submitted: the (small) snapshot against its pins."""
        if not self.state.alarm:
            trees = {"snapshot": self.input_trees()["snapshot"]}
            self._raise_if_changed(pins.verify(self.state.pins or {}, trees))

    def inputs_ok(self) -> bool:
        """No new work once an alarm is raised."""
        return not self.state.alarm

    def _raise_if_changed(self, changed: list[str]) -> None:
        if changed:
            self.alarm(f"pinned inputs changed since the run started: {', '.join(changed[:10])}; no new work "
                       f"starts. Restore them, or start a new run directory")

    def alarm(self, reason: str) -> None:
        if not self.state.alarm:
            self.log.emit("alarm", reason=reason)

    # ---- ideas ----------------------------------------------------------------------------------------
    def add_ideas(self, ideas: list[Idea], links: dict[str, dict[str, Any]] | None = None) -> None:
        """Register ideas once (a restart with the same input adds nothing). `links` marks near-duplicates of
        earlier ideas in the same event, so a crash cannot separate an idea from its verdict."""
        for idea in ideas:
            if is_replica(idea.idea_id):
                raise ValueError(f"idea id {idea.idea_id!r}: '~' marks replica runs and may not be in an idea id")
            if idea.idea_id not in self.state.candidates:
                fsio.atomic_write_json(self.p.layout.idea(idea.idea_id), to_json(idea))
                self.log.emit("idea", idea_id=idea.idea_id, text=idea.text, epoch=idea.epoch, origin=idea.origin,
                              thinking_tokens=idea.thinking_tokens, **(links or {}).get(idea.idea_id, {}))

    # ---- the tick --------------------------------------------------------------------------------------
    def tick(self) -> float:
        self.just_submitted = set()
        self.check_snapshot()
        self.harvest_implemented()
        self.start_implementations()
        self.schedule()
        self.collect()
        self.prune_outputs()
        self.record_spend()
        self.log.sync()
        return self.next_due_s()

    def next_due_s(self) -> float:
        """Seconds until the pipeline has work of its own (result files at poll_s, the next cluster query, a
        submission retry); finished implementations wake the loop through `wake` instead."""
        now, dues = self.clock(), [self.p.cfg.cluster.poll_s]
        if self.submit_failures:
            dues.append(self.submit_due_at - now)
        if self.pending_jobs():
            dues.append(self.cluster_due_at - now)
        if self.inflight and self.batch_due_at > now:
            dues.append(self.batch_due_at - now)
        return max(0.0, min(dues))

    def done(self) -> bool:
        """Every candidate and replica has its outcome, and no implementation is in flight."""
        return all(v.terminal for v in self.state.runs()) and not self.inflight

    def pending_jobs(self) -> list[CandidateView]:
        return self._views(lambda v: bool(v.job_id) and not v.status)

    # ---- implement -------------------------------------------------------------------------------------
    def start_implementations(self) -> None:
        for view in self._views(lambda v: v.implement_status in ("", "implementing") and v.idea):
            if view.cid in self.inflight or self.p.layout.candidate(view.cid).implement.exists():
                continue
            if self.p.meter.exhausted() or self.stopping() or not self.inputs_ok():
                return
            idea = from_json(Idea, fsio.read_json(self.p.layout.idea(view.cid)))
            self.inflight[view.cid] = self.pool.submit(self.p.implementer.implement, idea,
                                                       self.p.layout.candidate(view.cid))
            self.inflight[view.cid].add_done_callback(lambda _: self.wake.set())
            if view.implement_status != "implementing":
                self.log.emit("implement_started", cid=view.cid)

    def harvest_implemented(self) -> None:
        """Poll the run directory: any candidate with an implement record (ours, or dropped there) counts."""
        for cid, future in list(self.inflight.items()):
            if future.done():
                del self.inflight[cid]
                if future.exception() is not None:
                    self._implement_crashed(cid, future.exception())
                else:
                    self._record_implemented(cid)   # ours: no need to wait for the listing to notice
        for cid in self._listed_candidates():
            if cid not in self.inflight:
                self._record_implemented(cid)

    def _listed_candidates(self) -> list[str]:
        """List candidates/ only when it changed (its mtime) or once a minute; in between, re-check only the
        entries not yet resolved (a hand-dropped dir may get its READY file after the dir appeared)."""
        folder = self.p.layout.candidates
        mtime = folder.stat().st_mtime_ns if folder.exists() else 0
        now = self.clock()
        if mtime != self.listing[0] or now - self.listing[1] > FULL_LISTING_S:
            self.listing = (mtime, now)
            self.unresolved = set(self.p.layout.candidate_ids())
        self.unresolved = {c for c in self.unresolved if self._unresolved(c)}
        return sorted(self.unresolved)

    def _unresolved(self, cid: str) -> bool:
        view = self.state.candidates.get(cid)
        return view is None or view.implement_status in ("", "implementing")

    def _implement_crashed(self, cid: str, exc: BaseException | None) -> None:
        self.log.emit("implemented", cid=cid, status="failed", reason=f"implementer error: {exc!r}")

    def _record_implemented(self, cid: str) -> None:
        paths = self.p.layout.candidate(cid)
        if cid not in self.state.candidates and not self._adoptable(cid):
            return
        if not paths.implement.exists():
            if paths.ready.exists() and self._adoptable(cid):  # a ready codebase dropped in by hand
                self._adopt(cid)
            return
        record = fsio.read_json(paths.implement)
        if cid not in self.state.candidates:
            self._adopt_idea(cid)
        self.log.emit("implemented", cid=cid, status=record["status"], reason=record.get("reason", ""),
                      diff_lines=record.get("diff_lines", 0), cost_usd=record.get("cost_usd", 0.0))

    def _adoptable(self, cid: str) -> bool:
        """Only this daemon's own candidates run, unless `adopt_external` says otherwise: a directory that
        appears in candidates/ by other means is noted once and left alone."""
        if self.p.cfg.adopt_external:
            return True
        if cid not in self.ignored:
            self.ignored.add(cid)
            self.log.emit("ignored_external", cid=cid, reason="not created by this daemon (adopt_external is off)")
        return False

    def _adopt(self, cid: str) -> None:
        self._adopt_idea(cid)
        self.log.emit("implemented", cid=cid, status="ready", reason="dropped into the run directory")

    def _adopt_idea(self, cid: str) -> None:
        idea_file = self.p.layout.candidate(cid).idea
        data = fsio.read_json(idea_file) if idea_file.exists() else {"text": "(no idea.json)"}
        self.log.emit("idea", idea_id=cid, text=data.get("text", ""), epoch=data.get("epoch", self.epoch),
                      origin=data.get("origin", "external"), thinking_tokens=data.get("thinking_tokens", 0))

    @property
    def epoch(self) -> int:
        return self.state.search.epoch

    # ---- schedule --------------------------------------------------------------------------------------
    def schedule(self) -> None:
        if self.stopping() or not self.inputs_ok() or self.clock() < self.submit_due_at:
            return
        ready = [v for v in self._views(lambda v: v.implement_status == "ready" and not v.job_id and not v.status)
                 if self.p.layout.candidate(v.cid).ready.exists()]
        if not ready or self._batch_open(ready):
            return
        try:
            ready = self.reattach(ready)
        except ClusterError as exc:   # nobody knows whether the array went out: nothing is submitted again yet
            return self._submit_failed(ready, exc)
        if ready:
            self.submit(ready, attempt=0)

    def _batch_open(self, ready: list[CandidateView]) -> bool:
        """While implementations are in flight, the first ready run waits up to BATCH_WINDOW_S for others to
        join its array (a finished implementation wakes the loop at once; sbatch per run is what sites hate)."""
        now = self.clock()
        self.batch_due_at = min(self.ready_seen.setdefault(v.cid, now) for v in ready) + BATCH_WINDOW_S
        return bool(self.inflight) and now < self.batch_due_at

    def reattach(self, views: list[CandidateView]) -> list[CandidateView]:
        """After a crash between sbatch and its event: find the array by its unique name instead of
        submitting again. Returns the views that still need a submission."""
        left = []
        for name in sorted({v.intent for v in views if v.intent}):
            intent = self.state.intents[name]
            found = self.p.cluster.find_jobs(name)
            if len(found) == len(intent.cids):
                pairs = [(c, j) for c, j in zip(intent.cids, found) if not self.state.view(c).job_id]
                self._record_submitted([c for c, _ in pairs], [j for _, j in pairs], intent.attempt)
        for view in views:
            if not self.state.view(view.cid).job_id:
                left.append(view)
        return left

    def submit(self, views: list[CandidateView], attempt: int) -> None:
        tasks = [self._task(v.cid, attempt) for v in views]
        name = f"toolkit-{self.p.layout.root.name}-{secrets.token_hex(4)}"
        self.log.emit("submitting", cids=[v.cid for v in views], name=name, attempt=attempt)
        try:
            job_ids = self.p.cluster.submit(tasks, self.p.spec.resources, name)
        except Exception as exc:  # a failed sbatch must not kill the daemon; retried after a backoff
            return self._submit_failed(views, exc)
        self.submit_failures = 0
        self._record_submitted([v.cid for v in views], job_ids, attempt)

    def _submit_failed(self, views: list[CandidateView], exc: Exception) -> None:
        self.submit_failures += 1
        delay_s = min(SUBMIT_BACKOFF_MAX_S, self.p.cfg.cluster.poll_s * 2 ** (self.submit_failures - 1))
        self.submit_due_at = self.clock() + delay_s
        self.log.emit("submit_failed", cids=[v.cid for v in views], reason=repr(exc)[:2000], retry_in_s=delay_s)

    def _record_submitted(self, cids: list[str], job_ids: list[str], attempt: int) -> None:
        self.just_submitted.update(cids)
        for cid in cids:
            self.ready_seen.pop(cid, None)
        for cid, job_id in zip(cids, job_ids):
            self.log.emit("submitted", cid=cid, job_id=job_id, attempt=attempt, cluster=self.p.cluster.name,
                          gpus=self.p.spec.resources.gpus * self.p.spec.resources.nodes)

    def _task(self, cid: str, attempt: int) -> WorkerTask:
        return WorkerTask(cand_dir=str(self.p.layout.candidate(cid).root), env_dir=str(self.p.layout.env_dir),
                          smoke=self.p.cfg.smoke, data_dir=self.p.cfg.data_dir, attempt=attempt,
                          sandbox=self.p.cfg.sandbox, pins=self.state.pins,
                          seed=self.state.view(cid).seed, env_passthrough=self.p.cfg.cluster.env_passthrough,
                          sandbox_read=self.p.cfg.cluster.sandbox_read)

    # ---- collect ---------------------------------------------------------------------------------------
    def collect(self) -> None:
        """Only candidates still waiting are looked at: one stat each, one read per new result file; the new
        results are recorded together (after a restart that can be thousands)."""
        waiting = self._views(lambda v: bool(v.job_id) and (not v.status or v.status == "lost"))
        found = {v.cid: self._read_result(v) for v in waiting}
        results = [event for event in found.values() if event]
        self.log.emit_many("result", results)
        for event in results:
            if event.get("alarm"):
                self.alarm(f"{event['cid']}: {event['alarm']}")
        for event in results:
            self._note_duplicates(event["cid"])
        missing = [v for v in waiting if found[v.cid] is None and not v.status
                   and v.cid not in self.just_submitted]   # just submitted: queued, no need to ask SLURM
        if not missing or self.clock() < self.cluster_due_at:
            return
        # the cluster is asked at poll_s at most, whatever wakes the loop (sites rate-limit or ban a daemon
        # that runs sacct every second), and less often while nothing changes: results come from files anyway
        try:
            states = self.p.cluster.states([v.job_id for v in missing])
        except ClusterError as exc:   # slurmdbd down, a controller restart: ask again later, lose nothing
            log.warning("job states unavailable, asking again later: %s", exc)
            return self._next_query({})
        self._next_query({v.job_id: states[v.job_id].raw for v in missing})
        for view in missing:
            self._follow(view, states[view.job_id])

    def _next_query(self, raw: dict[str, str]) -> None:
        poll_s = self.p.cfg.cluster.poll_s
        same = raw == self.last_states and not self.just_submitted
        self.poll_interval_s = min(self.poll_interval_s * 2, POLL_BACKOFF_MAX * poll_s) if same else poll_s
        self.last_states = raw
        self.cluster_due_at = self.clock() + self.poll_interval_s

    def _read_result(self, view: CandidateView) -> dict[str, Any] | None:
        """The result event of result.json; None while there is none, {} to look again next tick.
        A late result replaces a `lost` verdict. Plain string paths: a restart may read thousands."""
        path = os.path.join(self._run_dir(view.cid), "result.json")
        if not os.path.exists(path):
            return None
        try:
            return result_event(fsio.read_json(path), view.cid)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as exc:
            first = self.malformed_seen.setdefault(view.cid, self.clock())
            if self.clock() - first < self.p.cfg.cluster.lost_grace_s:
                return {}  # maybe still being written by a non-atomic writer: look again next tick
            reason = f"malformed result file {path}: {exc!r}"
            return {**result_event({"status": "failed"}, view.cid), "reason": reason}

    def _note_duplicates(self, cid: str) -> None:
        try:
            names = os.listdir(self._run_dir(cid))
        except OSError:  # the directory went away after its result was read: nothing more to note
            return
        extra = sorted(n for n in names if n.startswith("result.dup-") and n.endswith(".json"))
        if extra:
            self.log.emit("duplicate_result", cid=cid, files=extra)

    def _follow(self, view: CandidateView, state: JobState) -> None:
        if state.phase != view.job_phase and state.phase != "unknown":
            self.log.emit("job_state", cid=view.cid, phase=state.phase, raw=state.raw)
        if state.phase != "finished":
            return
        first = self.finished_seen.setdefault(view.job_id, self.clock())
        if self.clock() - first >= self.p.cfg.cluster.lost_grace_s:
            self._lost(view, state)

    def _lost(self, view: CandidateView, state: JobState) -> None:
        """A job ended without a result: a SLURM time-out is final; the rest is `lost`, retried by policy."""
        raw, tail = state.raw, self.p.cluster.log_tail(view.job_id)
        self.log.emit("lost", cid=view.cid, job_id=view.job_id, attempt=view.attempt, raw=raw, log_tail=tail)
        if state.end == "timeout":
            return self._final(view, "timeout", f"SLURM time limit reached before the worker wrote a result ({raw})")
        if self._deserves_retry(view, state):
            return self.submit([view], attempt=view.attempt + 1)
        self._final(view, "lost", f"job ended ({raw or 'state unknown'}) without a result file")

    def _deserves_retry(self, view: CandidateView, state: JobState) -> bool:
        cluster = self.p.cfg.cluster
        if state.end == "cancelled" and not cluster.retry_cancelled:
            return False  # someone cancelled it on purpose
        return view.attempt < cluster.max_lost_retries and not self.stopping()

    def _final(self, view: CandidateView, status: str, reason: str) -> None:
        self.log.emit("result", cid=view.cid, status=status, job_id=view.job_id, attempt=view.attempt,
                      reason=reason, wall_s=0.0)

    def prune_outputs(self) -> None:
        """Large outputs of finished runs the keep policy (`disk`) no longer keeps: removed, then recorded."""
        for cid in keep.to_prune(self.state, self.p.cfg.disk):
            self.log.emit("pruned", **keep.prune_run(self.p.layout, cid, self.p.cfg.disk))

    def record_spend(self) -> None:
        if abs(self.p.meter.spent_usd - self.state.llm_spend_usd) > 1e-9:
            self.log.emit("llm_spend", spent_usd=self.p.meter.spent_usd, calls=self.p.meter.calls)

    def _run_dir(self, run_id: str) -> str:
        """Plain string paths: a restart may look at thousands."""
        return os.path.join(self.replicas_dir if is_replica(run_id) else self.candidates_dir, run_id)

    def _views(self, keep: Any) -> list[CandidateView]:
        """Candidates and replicas alike: both are jobs, submitted, collected and retried the same way."""
        return [v for v in self.state.runs() if keep(v)]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
