"""`toolkit rl`: train the ideator with GRPO, in this process or as a SLURM job on a GPU partition.

    toolkit rl --config configs/rl_tiny.yaml --out runs/rl-tiny            # local, CPU
    toolkit rl --config configs/rl_ideator.yaml --out runs/rl --partition h100   # the trainer as a SLURM job
    toolkit rl --out runs/rl --steps 80          # resume (automatic when --out has a checkpoint), train on
    toolkit rl --out runs/rl --status            # the metrics table
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from toolkit import fsio
from toolkit.cluster.base import Cluster, ClusterError, JobSpec, make_cluster
from toolkit.errors import ConfigError
from toolkit.rl.config import PLACEMENTS, RLConfig, TrainerConfig, load_rl_config, resolved, save_rl_config
from toolkit.rl.layout import RLLayout
from toolkit.rl.metrics import metrics_table
from toolkit.rl.rollouts import serve_steps
from toolkit.runs import with_llm

console = Console()
LLM_PROVIDERS = ("anthropic", "openai", "openai-compatible", "replay")


def add_rl_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("rl", help="GRPO on an open-weight ideator, rewarded by executing its ideas")
    p.add_argument("--config", help="RL YAML (configs/rl_*.yaml); not needed to resume an existing --out")
    p.add_argument("--out", required=True, help="RL directory (created; the same command resumes it)")
    p.add_argument("--steps", type=int, help="train until this many steps in total")
    p.add_argument("--resume", action="store_true", help="refuse to start unless --out has a checkpoint")
    p.add_argument("--cluster", choices=PLACEMENTS, help="where the trainer runs (rollout jobs: the config's run)")
    p.add_argument("--partition", help="run the trainer as a SLURM job on this partition (implies --cluster slurm)")
    p.add_argument("--wait", action="store_true", help="with a SLURM trainer: wait for it to end")
    p.add_argument("--status", action="store_true", help="only print the metrics table of --out")
    p.add_argument("--llm", choices=LLM_PROVIDERS, help="implementer LLM provider")
    p.add_argument("--model", help="implementer model")
    p.add_argument("--base-url", help="implementer endpoint (e.g. a vLLM server)")
    p.set_defaults(func=cmd_rl)


def cmd_rl(args: argparse.Namespace) -> int:
    layout = RLLayout(Path(args.out))
    if args.status:
        return show_status(layout)
    if args.resume and not layout.checkpoint_list():
        raise ConfigError(f"--resume: no checkpoint under {layout.checkpoints}; drop --resume to start there")
    cfg = with_flags(resolved(layout.config, fresh_config(layout, args)), args)
    save_rl_config(layout.config, cfg)
    return PLACE[cfg.trainer.cluster](layout, cfg, args.wait)


def fresh_config(layout: RLLayout, args: argparse.Namespace) -> RLConfig | None:
    if not args.config:
        return None
    if layout.config.exists():
        console.print(f"note: resuming {layout.root} with its saved {layout.config}; --config is ignored")
        return None
    return load_rl_config(Path(args.config))


def with_flags(cfg: RLConfig, args: argparse.Namespace) -> RLConfig:
    """Flags that may change on a resume: the step count, where the trainer runs, the implementer endpoint."""
    trainer = cfg.trainer
    if args.partition:
        trainer = dataclasses.replace(trainer, cluster="slurm", partition=args.partition)
    if args.cluster:
        trainer = dataclasses.replace(trainer, cluster=args.cluster)
    run = with_llm(cfg.run, args.llm, args.model, args.base_url, None)
    steps = args.steps if args.steps is not None else cfg.steps
    return dataclasses.replace(cfg, trainer=trainer, run=run, steps=steps)


def show_status(layout: RLLayout) -> int:
    if not layout.metrics.exists():
        raise ConfigError(f"{layout.metrics}: not found; is {layout.root} an RL directory with a finished step?")
    console.print(metrics_table(list(fsio.read_jsonl(layout.metrics))))
    return 0


def run_local(layout: RLLayout, cfg: RLConfig, wait: bool) -> int:
    from toolkit.rl.trainer import train

    train(layout.root, console)
    return 0


class TrainerJob:
    """The SLURM job's callable; on a time-out or preemption submitit requeues it and it resumes."""

    def __call__(self, root: str) -> int:
        from toolkit.rl.trainer import train

        train(Path(root))
        return 0

    def checkpoint(self, root: str) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(TrainerJob(), root)


def trainer_cluster(layout: RLLayout, cfg: RLConfig) -> Cluster:
    """The cluster the trainer job goes to: the run's SLURM settings (account, QOS, site lines, passthrough)."""
    return make_cluster(layout.trainer_jobs, dataclasses.replace(cfg.run.cluster, cluster="slurm"))


def trainer_spec(cfg: TrainerConfig) -> JobSpec:
    return JobSpec(name="toolkit-rl", time_min=cfg.timeout_min, cpus=cfg.cpus, mem_gb=cfg.mem_gb, gpus=cfg.gpus,
                   partition=cfg.partition, sbatch_extra=dict(cfg.sbatch_extra))


def submit_slurm(layout: RLLayout, cfg: RLConfig, wait: bool) -> int:
    """Submit the trainer job (or re-attach to the live one); with `executor: daemon` this process then
    executes the steps' ideas until the trainer is done."""
    check_job_llm(cfg)
    cluster = trainer_cluster(layout, cfg)
    job_id = live_trainer_job(layout, cluster) or submit_trainer(layout, cfg, cluster)
    state = lambda: trainer_end(cluster, job_id)   # noqa: E731
    if cfg.trainer.hands_off:
        serve_steps(layout, cfg, state, console)
        return show_status(layout)
    while wait and not state():
        time.sleep(cfg.run.cluster.poll_s)
    return show_status(layout) if wait else 0


def check_job_llm(cfg: RLConfig) -> None:
    """A job never gets API keys: a trainer that implements its own ideas must use a keyless endpoint."""
    llm = cfg.run.llm.implementer
    if cfg.trainer.executor == "in_job" and (llm.provider in ("anthropic", "openai") or llm.api_key_env):
        raise ConfigError(f"trainer.executor: in_job runs the {llm.provider} implementer inside the trainer job, "
                          f"which never gets API keys; use trainer.executor: daemon (the default), or a keyless "
                          f"openai-compatible endpoint")


def live_trainer_job(layout: RLLayout, cluster: Cluster) -> str:
    """The recorded trainer job while it is queued or running ('' otherwise): a rerun re-attaches to it."""
    if not layout.trainer_job.exists():
        return ""
    job_id = str(fsio.read_json(layout.trainer_job)["job_id"])
    return "" if trainer_end(cluster, job_id) else job_id


def submit_trainer(layout: RLLayout, cfg: RLConfig, cluster: Cluster) -> str:
    job_id = cluster.submit_job(TrainerJob(), (str(layout.root),), trainer_spec(cfg.trainer))
    fsio.atomic_write_json(layout.trainer_job, {"job_id": job_id})
    console.print(f"trainer job {job_id} on partition {cfg.trainer.partition or '(default)'}; log: "
                  f"{layout.trainer_jobs}/{job_id}_0_log.out; follow with: toolkit rl --out {layout.root} --status")
    return job_id


def trainer_end(cluster: Cluster, job_id: str) -> str:
    """'' while the job is queued, running or not yet known to SLURM; else how it ended."""
    try:
        state = cluster.states([job_id])[job_id]
    except ClusterError:
        return ""   # SLURM cannot be asked right now: assume it lives, ask again later
    return state.end    # set exactly when the job has finished


PLACE: dict[str, Callable[[RLLayout, RLConfig, bool], int]] = {"local": run_local, "slurm": submit_slurm}
