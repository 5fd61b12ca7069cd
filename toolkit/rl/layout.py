"""RLLayout: the one place that knows every path of an RL directory.

<rl_dir>/
  config.yaml                      resolved RLConfig, written once (a resume may only raise `steps`)
  trainer.lock                     pid@host of the trainer that owns the directory
  base_model/                      the tiny model + tokenizer built from the config (absent for a named model)
  metrics.jsonl                    one line per finished step
  steps/step-0003/prompt.txt       the rendered ideation prompt of the step
  steps/step-0003/rollouts.json    the G sampled completions, split into thinking and idea (resume reuses it)
  steps/step-0003/rng.pt           the RNG state right after sampling (a resumed step continues from it)
  steps/step-0003/rewards.json     per rollout: executor status, reward parts, advantage
  steps/step-0003/execute.json     the step's ideas, handed by a SLURM trainer to the executor daemon
  steps/step-0003/executed.json    the daemon's word that every idea of the step has its outcome
  steps/step-0003/exec/            the executor's run directory for the step's ideas (a RunLayout)
  checkpoints/step-000003/         policy/ (weights or adapter), optimizer.pt, rng.pt, state.json, archive.json
  trainer_jobs/                    submitit folder when the trainer runs as a SLURM job
  trainer_job.json                 that job's id (the same command re-attaches to it while it lives)
  report/                          `toolkit report RL_DIR`: index.html, plots/, CSV (the default --out)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StepPaths:
    root: Path

    @property
    def prompt(self) -> Path:
        return self.root / "prompt.txt"

    @property
    def rollouts(self) -> Path:
        return self.root / "rollouts.json"

    @property
    def rng(self) -> Path:
        return self.root / "rng.pt"

    @property
    def rewards(self) -> Path:
        return self.root / "rewards.json"

    @property
    def request(self) -> Path:
        return self.root / "execute.json"

    @property
    def executed(self) -> Path:
        return self.root / "executed.json"

    @property
    def exec_dir(self) -> Path:
        return self.root / "exec"


@dataclass(frozen=True)
class CheckpointPaths:
    root: Path

    @property
    def step(self) -> int:
        return int(self.root.name.split("-")[1])

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def optimizer(self) -> Path:
        return self.root / "optimizer.pt"

    @property
    def rng(self) -> Path:
        return self.root / "rng.pt"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def archive(self) -> Path:
        return self.root / "archive.json"


@dataclass(frozen=True)
class RLLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        return self.root / "trainer.lock"

    @property
    def base_model(self) -> Path:
        return self.root / "base_model"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def steps(self) -> Path:
        return self.root / "steps"

    def step(self, n: int) -> StepPaths:
        return StepPaths(self.steps / f"step-{n:04d}")

    def step_numbers(self) -> list[int]:
        """Steps that have a directory (sampled at least), oldest first."""
        if not self.steps.is_dir():
            return []
        return sorted(int(p.name.split("-")[1]) for p in self.steps.glob("step-*") if p.is_dir())

    @property
    def report(self) -> Path:
        return self.root / "report"

    def requested_steps(self) -> list[int]:
        """Steps whose ideas a trainer handed over and the daemon has not yet executed, oldest first."""
        found = sorted(int(p.parent.name.split("-")[1]) for p in self.root.glob("steps/step-*/execute.json"))
        return [n for n in found if not self.step(n).executed.exists()]

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, n: int) -> CheckpointPaths:
        return CheckpointPaths(self.checkpoints / f"step-{n:06d}")

    def checkpoint_list(self) -> list[CheckpointPaths]:
        """Complete checkpoints, oldest first (a half-written one still has its temporary name)."""
        if not self.checkpoints.is_dir():
            return []
        found = [CheckpointPaths(p) for p in self.checkpoints.glob("step-*") if p.is_dir()]
        return sorted(found, key=lambda c: c.step)

    def staging(self, n: int, token: str) -> Path:
        return self.checkpoints / f".staging-{n:06d}-{token}"

    @property
    def trainer_jobs(self) -> Path:
        return self.root / "trainer_jobs"

    @property
    def trainer_job(self) -> Path:
        return self.root / "trainer_job.json"
