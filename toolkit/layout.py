"""RunLayout: the one place that knows every path of a run directory.

runs/<name>/
  config.yaml                    resolved config, written once
  daemon.lock                    pid@host of the daemon that owns the run
  env/                           snapshot of the environment (env.yaml + pristine codebase) taken at start
  ideas/<idea_id>.json
  ideas/calls/                   every ideation prompt and the LLM's response, as sent and received
  candidates/<cid>/idea.json     the idea this candidate implements
  candidates/<cid>/code/         the patched codebase the job runs in
  candidates/<cid>/patch.diff    the diff that applied
  candidates/<cid>/implement/    prompts, responses, the implement log (one JSON per attempt)
  candidates/<cid>/implement.json  implement outcome (status ready / failed / invalid, reason)
  candidates/<cid>/READY         marker: ready to be scheduled (anything that drops one gets scheduled)
  candidates/<cid>/job.json      submission record (job id, array task), written by the scheduler
  candidates/<cid>/result.json   written by the worker, atomically, once per attempt
  candidates/<cid>/worker.log    run + eval output
  candidates/<cid>/scratch/      the run's scratch (TOOLKIT_SCRATCH, HOME, TMPDIR of its confined steps)
  candidates/<cid>/control/      the confinement launcher's reports, out of the candidate's reach
  replicas/<cid>~s<seed>/        a re-run of a candidate (or the baseline) with a fresh seed: the same
                                 files as a candidate, its code rebuilt from the snapshot + patch.diff
  jobs/                          submitit folders (%A_%a)
  state/events.jsonl             append-only event log: the daemon rebuilds its state from it
  state/llm_calls.jsonl          one line per LLM call (tokens, cost, status)
  state/baseline_checked         stamp: the unchanged codebase passed the env's quick check (once per run)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPLICA_MARK = "~"                     # replica run ids: <cid>~s<seed> (never a candidate id: see Pipeline.add_ideas)


def is_replica(run_id: str) -> bool:
    """A noise-floor or certification re-run (its paths live under replicas/, not candidates/)."""
    return REPLICA_MARK in run_id


@dataclass(frozen=True)
class CandidatePaths:
    root: Path

    @property
    def cid(self) -> str:
        return self.root.name

    @property
    def idea(self) -> Path:
        return self.root / "idea.json"

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def patch(self) -> Path:
        return self.root / "patch.diff"

    @property
    def implement_dir(self) -> Path:
        return self.root / "implement"

    @property
    def implement(self) -> Path:
        return self.root / "implement.json"

    @property
    def ready(self) -> Path:
        return self.root / "READY"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def outputs(self) -> tuple[Path, Path]:
        """The dirs candidate code writes (its checkpoints land there); every other file here is the toolkit's."""
        return (self.code, self.scratch)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def env_dir(self) -> Path:
        return self.root / "env"

    @property
    def ideas(self) -> Path:
        return self.root / "ideas"

    def idea(self, idea_id: str) -> Path:
        return self.ideas / f"{idea_id}.json"

    @property
    def ideation_calls(self) -> Path:
        """Every ideation prompt and response (<epoch>-<ideas before it>-<mode>-<ms>.prompt.md / .response.md)."""
        return self.ideas / "calls"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates"

    def candidate(self, cid: str) -> CandidatePaths:
        """A candidate's paths, or a replica's (noise-floor and certification re-runs)."""
        return CandidatePaths((self.replicas if is_replica(cid) else self.candidates) / cid)

    @property
    def replicas(self) -> Path:
        return self.root / "replicas"

    def candidate_ids(self) -> list[str]:
        if not self.candidates.is_dir():
            return []
        with os.scandir(self.candidates) as entries:  # the entry type comes with the listing: no stat each
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def events(self) -> Path:
        return self.state / "events.jsonl"

    @property
    def llm_calls(self) -> Path:
        return self.state / "llm_calls.jsonl"

    @property
    def baseline_checked(self) -> Path:
        """Stamp: the environment's unchanged codebase passed its quick check in this run (checked once)."""
        return self.state / "baseline_checked"

    def make(self) -> None:
        for folder in (self.ideas, self.candidates, self.replicas, self.jobs, self.state):
            folder.mkdir(parents=True, exist_ok=True)
