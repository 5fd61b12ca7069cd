"""`toolkit rl`: train the ideator with GRPO, in this process or as a SLURM job on a GPU partition.

    toolkit rl --config configs/rl_tiny.yaml --out runs/rl-tiny            # local, CPU
    toolkit rl --config configs/rl_ideator.yaml --out runs/rl --partition h100   # the trainer as a SLURM job
    toolkit rl --out runs/rl --steps 80          # resume (automatic when --out has a checkpoint), train on
    toolkit rl --out runs/rl --status            # the metrics table
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from toolkit import fsio
from toolkit.errors import ConfigError
from toolkit.rl.config import PLACEMENTS, RLConfig, TrainerConfig, load_rl_config, resolved, save_rl_config
from toolkit.rl.layout import RLLayout
from toolkit.rl.metrics import metrics_table
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


def slurm_parameters(cfg: TrainerConfig) -> dict[str, Any]:
    params: dict[str, Any] = dict(name="toolkit-rl", timeout_min=cfg.timeout_min, cpus_per_task=cfg.cpus,
                                  mem_gb=cfg.mem_gb, slurm_additional_parameters=dict(cfg.sbatch_extra))
    if cfg.gpus:
        params["gpus_per_node"] = cfg.gpus
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    return params


def submit_slurm(layout: RLLayout, cfg: RLConfig, wait: bool) -> int:
    import submitit

    executor = submitit.AutoExecutor(folder=layout.trainer_jobs, cluster="slurm")
    executor.update_parameters(**slurm_parameters(cfg.trainer))
    job = executor.submit(TrainerJob(), str(layout.root))
    console.print(f"trainer job {job.job_id} on partition {cfg.trainer.partition or '(default)'}; "
                  f"log: {job.paths.stdout}; follow with: toolkit rl --out {layout.root} --status")
    if not wait:
        return 0
    job.result()
    return show_status(layout)


PLACE: dict[str, Callable[[RLLayout, RLConfig, bool], int]] = {"local": run_local, "slurm": submit_slurm}
