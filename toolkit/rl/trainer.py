"""The GRPO loop: sample G ideas -> execute them (the executor, on SLURM) -> advantages -> update -> log ->
checkpoint. One trainer owns an RL directory (trainer.lock).

Resume: the newest checkpoint restores weights, optimiser, RNG, archive and the step count. A step cut short
is redone from where it stopped: its rollouts.json (and the RNG state after sampling) are reused, and the
executor resumes its own run directory, so no idea is implemented or submitted twice.

A SLURM trainer (`trainer.executor: daemon`, the default) executes nothing itself: it writes the step's ideas
to execute.json and waits for the login-node daemon (`toolkit.rl.rollouts`) to write executed.json; GPU nodes
often have no route to LLM APIs and may not submit jobs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from toolkit import fsio
from toolkit.envs import load_env
from toolkit.errors import ToolkitError
from toolkit.layout import RunLayout
from toolkit.loop import execute_ideas
from toolkit.records import Idea, to_json
from toolkit.report.tables import diversity, word_set
from toolkit.rl import checkpoint
from toolkit.rl.config import RLConfig, load_rl_config
from toolkit.rl.grpo import UpdateStats, group_advantages, make_optimizer, policy_gradient_step
from toolkit.rl.layout import CheckpointPaths, RLLayout, StepPaths
from toolkit.rl.metrics import mean, metrics_table, near_duplicate_share
from toolkit.rl.policy import encode_prompt, ensure_base_model, load_policy, load_tokenizer, think_close_id
from toolkit.rl.prompt import ideation_prompt, previous_results
from toolkit.rl.rewards import Reward, shape_reward
from toolkit.rl.sampling import Rollout, make_sampler, to_rollout
from toolkit.state import CandidateView, load_state, valid_result


class StepInterrupted(ToolkitError):
    """The executor stopped (a signal) before every idea of the step had a result."""


class Trainer:
    def __init__(self, layout: RLLayout, cfg: RLConfig, console: Console | None = None) -> None:
        import torch

        self.layout, self.cfg, self.console = layout, cfg, console or Console()
        if cfg.policy.cpu_threads:
            torch.set_num_threads(cfg.policy.cpu_threads)
        self.spec = load_env(cfg.run.env, smoke=cfg.run.smoke)
        self.base = ensure_base_model(layout, cfg.policy, ideation_prompt(self.spec, []), cfg.seed)
        self.tokenizer = load_tokenizer(self.base)
        ckpt = checkpoint.latest_checkpoint(layout)
        self.model = load_policy(self.base, cfg.policy, ckpt.policy if ckpt else None)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.step, self.archive = 0, list[dict[str, Any]]()
        if ckpt:
            self._restore(ckpt)
        else:
            torch.manual_seed(cfg.seed)
        self.sampler = make_sampler(cfg.sampling, cfg.policy, self.model, self.tokenizer, self.base, cfg.seed)
        self.sampler.sync(ckpt.policy if ckpt else None)

    def _restore(self, ckpt: CheckpointPaths) -> None:
        optimizer, rng, self.archive, state = checkpoint.load_training_state(ckpt)
        self.optimizer.load_state_dict(optimizer)
        checkpoint.set_rng_state(rng)
        self.step = int(state["step"])
        logged = {row.get("step") for row in fsio.read_jsonl(self.layout.metrics)}
        if self.step not in logged:   # the trainer stopped between the checkpoint and the metrics line
            fsio.append_jsonl(self.layout.metrics, state["metrics"])

    def run(self) -> None:
        while self.step < self.cfg.steps:
            self.train_step()

    def train_step(self) -> dict[str, Any]:
        n = self.step + 1
        paths = self.layout.step(n)
        t0 = time.monotonic()
        prompt, rollouts = self.rollouts(n, paths)
        t1 = time.monotonic()
        rewards = self.rewards(n, rollouts, self.execute(n, paths, rollouts))
        t2 = time.monotonic()
        advantages = group_advantages([r.total for r in rewards])
        stats = policy_gradient_step(self.model, self.optimizer, prompt, rollouts, advantages, self.cfg.optim,
                                     self.cfg.sampling.temperature)
        t3 = time.monotonic()
        self._save_rewards(paths, rollouts, rewards, advantages)
        self.archive += [archive_entry(n, ro, re) for ro, re in zip(rollouts, rewards) if ro.idea is not None]
        self.step = n
        metrics = step_metrics(n, rollouts, rewards, stats, self.cfg.same_idea_jaccard)
        metrics.update(sampling_s=t1 - t0, execution_s=t2 - t1, update_s=t3 - t2)
        ckpt = checkpoint.save_checkpoint(self.layout, n, self.model, self.optimizer, self.archive, metrics,
                                          self.cfg.keep_checkpoints)
        self.sampler.sync(ckpt.policy)
        metrics.update(checkpoint_s=time.monotonic() - t3, step_s=time.monotonic() - t0)
        fsio.append_jsonl(self.layout.metrics, metrics)
        self.console.print(metrics_table(list(fsio.read_jsonl(self.layout.metrics))))
        return metrics

    # ---- sample ----------------------------------------------------------------------------------------
    def rollouts(self, n: int, paths: StepPaths) -> tuple[list[int], list[Rollout]]:
        """Sample the step's group, or reuse the one a stopped trainer already saved."""
        if paths.rollouts.exists():
            saved = fsio.read_json(paths.rollouts)
            checkpoint.set_rng_state(checkpoint.load_torch(paths.rng))
            return saved["prompt_ids"], [Rollout.from_json(r) for r in saved["rollouts"]]
        limit = self.cfg.mitigations.previous_results
        text = ideation_prompt(self.spec, previous_results(self.archive, n - 1, limit) if limit else [])
        fsio.atomic_write_text(paths.prompt, text)
        prompt = encode_prompt(self.tokenizer, text)
        completions = self.sampler.sample(prompt, self.cfg.sampling.group_size)
        close, stops = think_close_id(self.tokenizer), self.sampler.stops
        rollouts = [to_rollout(k, c, self.tokenizer, close, stops) for k, c in enumerate(completions)]
        checkpoint.save_torch(checkpoint.rng_state(), paths.rng)
        fsio.atomic_write_json(paths.rollouts, {"prompt_ids": prompt,
                                                "rollouts": [dataclasses.asdict(r) for r in rollouts]})
        return prompt, rollouts

    # ---- execute ---------------------------------------------------------------------------------------
    def execute(self, n: int, paths: StepPaths, rollouts: list[Rollout]) -> dict[str, CandidateView]:
        """Every idea's outcome; an interrupted execution stops the trainer (no update on partial rewards)."""
        ideas = [Idea(idea_id=r.idea_id, text=r.idea, epoch=n, origin="rl", thinking_tokens=r.thinking_tokens)
                 for r in rollouts if r.idea]
        if not ideas:
            return {}
        if self.cfg.trainer.hands_off:
            views = self.executed_by_daemon(paths, ideas)
        else:
            views = execute_ideas(paths.exec_dir, self.cfg.run, ideas, console=self.console).candidates
        unfinished = sorted(cid for cid, view in views.items() if not view.terminal)
        if unfinished:
            raise StepInterrupted(f"step {n}: execution stopped before {len(unfinished)} ideas finished (see "
                                  f"{paths.exec_dir}); run the same command again to resume the step")
        return views

    def executed_by_daemon(self, paths: StepPaths, ideas: list[Idea]) -> dict[str, CandidateView]:
        """Hand the ideas over (once: a restarted trainer finds them there) and wait for the daemon's word."""
        if not paths.request.exists():
            fsio.atomic_write_json(paths.request, {"ideas": [to_json(idea) for idea in ideas]})
        while not paths.executed.exists():
            time.sleep(self.cfg.run.cluster.poll_s)
        return load_state(RunLayout(paths.exec_dir)).candidates

    def rewards(self, n: int, rollouts: list[Rollout], views: dict[str, CandidateView]) -> list[Reward]:
        previous = [word_set(e["idea"]) for e in self.archive if e["step"] == n - 1]
        archive = [word_set(e["idea"]) for e in self.archive]
        return [shape_reward(r, views.get(r.idea_id), previous, archive, self.cfg.mitigations) for r in rollouts]

    def _save_rewards(self, paths: StepPaths, rollouts: list[Rollout], rewards: list[Reward],
                      advantages: list[float]) -> None:
        rows = [{"idea_id": ro.idea_id, **dataclasses.asdict(re), "total": re.total, "advantage": a}
                for ro, re, a in zip(rollouts, rewards, advantages)]
        fsio.atomic_write_json(paths.rewards, rows)


def archive_entry(step: int, rollout: Rollout, reward: Reward) -> dict[str, Any]:
    return {"step": step, "idea": rollout.idea, "status": reward.status,
            "reward": reward.env if reward.status == "ok" else None}


def step_metrics(n: int, rollouts: list[Rollout], rewards: list[Reward], stats: UpdateStats,
                 same_idea: float) -> dict[str, Any]:
    ideas = [r.idea for r in rollouts if r.idea is not None]
    div = diversity(ideas, same_idea)
    ran = [re for re in rewards if valid_result(re.status, re.env)]
    return {"step": n, "rollouts": len(rollouts), "idea_rate": len(ideas) / len(rollouts),
            "exec_rate": len(ran) / len(rollouts), "reward_mean": mean([r.env for r in rewards]),
            "reward_max": max(r.env for r in rewards), "shaped_mean": mean([r.total for r in rewards]),
            "thinking_tokens_mean": mean([r.thinking_tokens for r in rollouts]),
            "idea_tokens_mean": mean([r.idea_tokens for r in rollouts if r.idea is not None]),
            "forced_close_rate": mean([float(r.forced_close) for r in rollouts]),
            "distinct_ideas": div.distinct, "mean_jaccard": div.mean_jaccard, "top_idea_share": div.top_share,
            "near_duplicate_share": near_duplicate_share(ideas),
            "loss": stats.loss, "grad_norm": stats.grad_norm, "trained_rollouts": stats.trained_rollouts,
            "trained_tokens": stats.trained_tokens, "time": time.time()}


def train(root: Path, console: Console | None = None) -> None:
    """Train the RL directory `root` (its config.yaml) to its step count; the entry point of local and SLURM."""
    layout = RLLayout(root)
    cfg = load_rl_config(layout.config)
    lock = fsio.DaemonLock(layout.lock)
    lock.acquire()
    try:
        checkpoint.clear_staging(layout)
        Trainer(layout, cfg, console).run()
    finally:
        lock.release()
