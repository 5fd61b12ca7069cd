"""RL configuration: frozen dataclasses loaded with `toolkit.config.from_dict` (unknown keys are errors).

The executor part (env, cluster for the rollouts' jobs, implementer LLM) is the ordinary `RunConfig`,
embedded as `run`; everything else is the ideator's training. Units live in names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolkit import fsio
from toolkit.config import RunConfig, from_dict, load_yaml, to_dict
from toolkit.errors import ConfigError

BACKENDS = ("auto", "hf", "vllm")
DTYPES = ("float32", "bfloat16", "float16")
EXECUTORS = ("daemon", "in_job")
PLACEMENTS = ("local", "slurm")


@dataclass(frozen=True)
class TinyModelConfig:
    """A Qwen3-architecture model with random weights and a BPE tokenizer trained on the prompt (offline)."""
    vocab_size: int = 512
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 8192


@dataclass(frozen=True)
class PolicyConfig:
    model: str = ""                    # Hugging Face name or local path; "" = build `tiny` (random init)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"             # float32 | bfloat16 | float16 (weights and compute)
    lora_rank: int = 0                 # 0 = full fine-tuning; > 0 = LoRA adapters (peft) of this rank
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    gradient_checkpointing: bool = False
    cpu_threads: int = 0               # torch threads on CPU; 0 = torch's default (oversubscribes shared CPUs)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"policy.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.lora_rank < 0:
            raise ConfigError("policy.lora_rank must be >= 0 (0 = full fine-tuning)")


@dataclass(frozen=True)
class SamplingConfig:
    backend: str = "auto"              # auto (vllm when importable and a GPU is present, else hf) | hf | vllm
    group_size: int = 8                # G rollouts per prompt (paper: 128 nanoGPT, 256 GRPO)
    temperature: float = 1.0
    think_budget_tokens: int = 1024    # thinking stops here ...
    force_close_thinking: bool = True  # ... and `</think>` is appended (not trained on); False: no idea, reward 0
    idea_max_tokens: int = 512         # the idea after `</think>`
    vllm_gpu_memory_utilization: float = 0.4
    vllm_tensor_parallel: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"sampling.backend={self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.group_size < 2:
            raise ConfigError(f"sampling.group_size={self.group_size}: GRPO needs at least 2 rollouts per group")
        if self.temperature <= 0:
            raise ConfigError("sampling.temperature must be > 0 (the policy gradient needs sampled rollouts)")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0         # 0 = no clipping
    micro_batch: int = 4               # rollouts per forward/backward (gradients accumulate over the group)


@dataclass(frozen=True)
class MitigationConfig:
    """The paper's three attempts against collapse, plus ours (novelty against every executed idea)."""
    previous_results: int = 0          # show this many of the previous step's ideas with outcomes in the prompt
    length_reward_per_token: float = 0.0   # bonus per thinking token, for runs that succeeded ...
    length_reward_cap: float = 0.3         # ... capped here (paper: 0.3)
    jaccard_penalty: float = 0.0       # minus w * max Jaccard(idea, previous step's ideas)
    novelty_bonus: float = 0.0         # plus w * (1 - max Jaccard(idea, archive of all executed ideas)), if ok


@dataclass(frozen=True)
class TrainerConfig:
    """Where the trainer process itself runs (the rollouts' jobs go where `run.cluster` says)."""
    cluster: str = "local"             # local (this process) | slurm (a submitit job; --partition implies it)
    partition: str = ""
    gpus: int = 1
    cpus: int = 8
    mem_gb: float = 64.0
    timeout_min: int = 2880            # on time-out the job checkpoints and requeues itself (it resumes)
    sbatch_extra: dict[str, str] = field(default_factory=dict)
    # who implements, submits and collects the ideas of a SLURM trainer's steps: `daemon` = the `toolkit rl`
    # command on the login node (the trainer job needs no route to an LLM API and submits nothing); `in_job` =
    # the trainer job itself (its node must reach the LLM and may submit jobs; a job never gets API keys)
    executor: str = "daemon"

    def __post_init__(self) -> None:
        if self.cluster not in PLACEMENTS:
            raise ConfigError(f"trainer.cluster={self.cluster!r} is not one of {', '.join(PLACEMENTS)}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"trainer.executor={self.executor!r} is not one of {', '.join(EXECUTORS)}")

    @property
    def hands_off(self) -> bool:
        """The trainer is a SLURM job whose ideas the login-node daemon executes."""
        return self.cluster == "slurm" and self.executor == "daemon"


@dataclass(frozen=True)
class RLConfig:
    run: RunConfig = field(default_factory=RunConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mitigations: MitigationConfig = field(default_factory=MitigationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    steps: int = 10
    seed: int = 0
    keep_checkpoints: int = 2          # newest checkpoints kept (resume needs only the last)
    same_idea_jaccard: float = 0.7     # diversity: ideas whose word sets overlap this much count as one idea

    def __post_init__(self) -> None:
        if self.sampling.backend == "vllm" and self.policy.lora_rank == 0:
            raise ConfigError("sampling.backend=vllm reloads LoRA adapters each step: set policy.lora_rank > 0, "
                              "or sampling.backend: hf for full fine-tuning")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be >= 1 (resume needs the newest one)")


def load_rl_config(path: Path) -> RLConfig:
    return from_dict(RLConfig, load_yaml(path), str(path))


def save_rl_config(path: Path, cfg: RLConfig) -> None:
    fsio.atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def resolved(saved: Path, fresh: RLConfig | None) -> RLConfig:
    """The run's config: the saved one when resuming (flags may then change a few fields), else `fresh`."""
    if saved.exists():
        return load_rl_config(saved)
    if fresh is None:
        raise ConfigError(f"{saved} does not exist: pass --config to start a new RL run there")
    return fresh
