"""Configuration: frozen dataclasses loaded from YAML.

An unknown key is an error that lists the valid keys with their defaults; units live in names
(`timeout_min`, `poll_s`, `mem_gb`); the resolved config is saved into the run directory.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from toolkit.errors import ConfigError
from toolkit.jobenv import secret_like
from toolkit.llm.base import LLMConfigError, LLMSettings, check_thinking
from toolkit.schema import from_dict, load_yaml, override, to_dict  # noqa: F401 (the config API)

CLUSTERS = ("slurm", "local", "debug")
SANDBOXES = ("auto", "landlock", "bwrap", "apptainer", "none")


WANDB_MODES = ("offline", "online", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    enabled: bool = False              # off by default
    project: str = "toolkit"
    entity: str = ""                   # "" = the account's default entity
    mode: str = "offline"              # offline (no network; `wandb sync` later) | online | disabled
    dir: str = ""                      # W&B writes under <dir>/wandb; "" = the run directory

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"wandb.mode={self.mode!r} is not one of {', '.join(WANDB_MODES)}")


@dataclass(frozen=True)
class ClusterConfig:
    cluster: str = "local"             # slurm | local | debug
    partition: str = ""                # "" = the cluster's default partition
    account: str = ""
    qos: str = ""
    array_parallelism: int = 64        # max array tasks running at once (sbatch --array=...%N)
    time_margin_min: int = 5           # added to the env's run + eval budget for the SLURM time limit
    poll_s: float = 10.0               # scheduler/collector tick interval
    lost_grace_s: float = 60.0         # a job SLURM calls finished gets this long for its result file to appear
    max_lost_retries: int = 1          # a lost task (node failure, kill, no result file) is resubmitted this often
    retry_cancelled: bool = False      # also resubmit tasks someone cancelled with scancel
    sbatch_extra: dict[str, str] = field(default_factory=dict)   # any other sbatch flag, e.g. {constraint: h100}
    max_array_size: int = 0            # tasks per array at most; 0 = the site's MaxArraySize (scontrol show config)
    # the site's job environment: more variables passed to jobs (names or globs; never secret-looking ones),
    # shell lines run before the worker (module loads, environment activation), and read-only trees candidate
    # code may read (site software and module trees outside /usr and /opt, e.g. /apps or /cvmfs)
    env_passthrough: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    sandbox_read: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"cluster.cluster={self.cluster!r} is not one of {', '.join(CLUSTERS)}")
        secret = [p for p in self.env_passthrough if secret_like(p)]
        if secret:
            raise ConfigError(f"cluster.env_passthrough: {', '.join(secret)} look(s) like a secret (key, token, "
                              f"password...), and a secret never reaches candidate code; remove it")


@dataclass(frozen=True)
class ImplementConfig:
    samples: int = 10                  # diffs sampled in parallel per idea (paper: 10)
    revisions: int = 2                 # sequential self-revisions of a failing diff (paper: 2)
    # compile + the env's quick check before a diff wins, a failure going back to revision; false = only
    # patchability is checked before launch, as in the paper (its execution rates, Fig. 2, were measured so)
    preflight: bool = True
    quick_check_timeout_s: float = 120.0
    workers: int = 8                   # ideas implemented at once (LLM calls are further capped per client)
    preflight_concurrency: int = 2     # quick checks running at once on the daemon's host


@dataclass(frozen=True)
class DiskConfig:
    """Disk hygiene (toolkit/disk.py): once a run is scored, its large outputs (checkpoints) are removed unless
    the keep policy keeps them: an ok candidate among the best `keep_top_k` by reward; nothing else."""
    prune: bool = True                 # false: every run keeps all its outputs
    keep_top_k: int = 5                # ok candidates that keep their large outputs, best reward first (0 = none)
    large_file_mb: float = 10.0        # a file at least this big in a run's code dir or scratch is a large output

    def __post_init__(self) -> None:
        if self.keep_top_k < 0 or self.large_file_mb <= 0:
            raise ConfigError(f"disk.keep_top_k={self.keep_top_k} must be >= 0 and disk.large_file_mb="
                              f"{self.large_file_mb} > 0 (disk.prune: false keeps everything)")


@dataclass(frozen=True)
class LLMConfig:
    ideator: LLMSettings = field(default_factory=LLMSettings)
    implementer: LLMSettings = field(default_factory=LLMSettings)
    spend_cap_usd: float = 0.0         # 0 = no cap; new LLM calls stop cleanly at the cap


@dataclass(frozen=True)
class RunConfig:
    env: str = "tiny_lm"               # a shipped env name (envs/<name>) or a path to a directory with env.yaml
    smoke: bool = False                # use the env's `smoke:` overrides (CPU smoke mode)
    data_dir: str = ""                 # exported to jobs as TOOLKIT_DATA_DIR; "" = ~/.cache/toolkit/data/<env>
    llm: LLMConfig = field(default_factory=LLMConfig)
    implement: ImplementConfig = field(default_factory=ImplementConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    # how candidate code is confined: auto (landlock, else bwrap, else apptainer) | landlock | bwrap |
    # apptainer | none (unconfined: scores can then be forged; an explicit opt-out, announced loudly)
    sandbox: str = "auto"
    # schedule candidate directories that something other than this daemon dropped into candidates/
    adopt_external: bool = False

    def __post_init__(self) -> None:
        if self.sandbox not in SANDBOXES:
            raise ConfigError(f"sandbox={self.sandbox!r} is not one of {', '.join(SANDBOXES)}")


STRATEGIES = ("evolve", "best_of_n")
DEFAULT_SERVE_COMMAND = ("vllm serve {model} --host {bind} --port {port} --served-model-name {model} "
                         "--tensor-parallel-size {gpus}")


@dataclass(frozen=True)
class ServeConfig:
    model: str = ""                    # "" = no server; else the HF model to serve (e.g. Qwen/Qwen3-30B-A3B)
    partition: str = ""                # GPU partition ("" = cluster.partition)
    gpus: int = 1
    cpus: int = 8
    mem_gb: float = 64.0
    time_min: int = 2880               # the server job's SLURM time limit
    port: int = 0                      # 0 = a port found free on the node when the job starts
    command: str = DEFAULT_SERVE_COMMAND     # {model} {port} {bind} {gpus} are filled in; the key is VLLM_API_KEY
    # "" = loopback when the daemon runs on the server's node, else the node's cluster-facing address; never
    # 0.0.0.0 by default (every host that can reach the node could use the GPUs behind it)
    bind_host: str = ""
    advertise_host: str = ""           # how the daemon reaches the node ("" = the address it binds)
    health_timeout_s: float = 1800.0   # model download + load can take long on first use
    roles: tuple[str, ...] = ("ideator", "implementer")



@dataclass(frozen=True)
class CertifyConfig:
    """Certified results: the baseline's noise floor from several seeds, and fresh-seed re-runs of the best
    screened candidates, judged by a one-sided Welch t-test against baseline re-runs in the same array."""
    enabled: bool = True
    noise_floor_seeds: int = 3         # baseline runs at the start, the screening run included (1 = no floor)
    top_k: int = 5                     # best screened candidates, not yet tested, re-run per round
    seeds: int = 3                     # fresh-seed re-runs per candidate
    baseline_seeds: int = 3            # baseline re-runs interleaved with each round's (cancel node/time drift)
    alpha: float = 0.01                # one-sided significance level per candidate
    min_effect: float = 0.0            # metric units: the re-runs must beat the baseline's mean by at least this
    every_epoch: bool = True           # a round after every epoch (else only after the last one)
    budget_share: float = 0.3          # at most this share of the search's GPU-hours (task-hours on CPU)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ConfigError(f"search.certify.alpha={self.alpha} must be in (0, 0.5)")
        if self.seeds < 2 or self.baseline_seeds < 2:
            raise ConfigError("search.certify.seeds and baseline_seeds must be at least 2 (a t-test needs a spread)")
        if self.noise_floor_seeds < 1 or self.top_k < 0 or self.min_effect < 0:
            raise ConfigError("search.certify: noise_floor_seeds >= 1, top_k >= 0 and min_effect >= 0")
        if not 0 < self.budget_share < 1:
            raise ConfigError(f"search.certify.budget_share={self.budget_share} must be in (0, 1)")


DEDUP_METHODS = ("text", "embedding", "off")
DEDUP_POLICIES = ("skip", "run")


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate ideas, caught before they are implemented (toolkit/dedup.py)."""
    method: str = "text"               # text (no network) | embedding (an OpenAI-compatible endpoint) | off
    policy: str = "skip"               # skip (link to the original's result) | run (flag it, run it anyway)
    threshold: float = 0.0             # 0 = the method's default (chosen for precision)
    embedding_model: str = ""          # embedding: the model name
    base_url: str = ""                 # embedding: the endpoint ("" = api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"

    def __post_init__(self) -> None:
        if self.method not in DEDUP_METHODS:
            raise ConfigError(f"search.dedup.method={self.method!r} is not one of {', '.join(DEDUP_METHODS)}")
        if self.policy not in DEDUP_POLICIES:
            raise ConfigError(f"search.dedup.policy={self.policy!r} is not one of {', '.join(DEDUP_POLICIES)}")
        if self.method == "embedding" and not self.embedding_model:
            raise ConfigError("search.dedup.method=embedding needs search.dedup.embedding_model")


@dataclass(frozen=True)
class SearchConfig:
    strategy: str = "evolve"           # evolve (exploit/explore from results) | best_of_n (fresh ideas only)
    epochs: int = 10
    ideas_per_epoch: int = 50          # paper: 50 (grpo_math), 80 (nanogpt)
    ideas_per_call: int = 10           # ideas requested per LLM call; each call lists this epoch's ideas to avoid
    exploit_base: float = 0.5          # exploit share = min(base + step * floor(epoch / every), max),
    exploit_step: float = 0.1          # rounded down to a multiple of ideas_per_call
    exploit_every: int = 2
    exploit_max: float = 0.8
    exploit_exemplars: int = 100       # ideas that beat the baseline shown to an exploit call (best first)
    explore_samples: int = 100         # earlier ideas (with results, failures marked) shown to an explore call
    epoch_deadline_min: float = 0.0    # 0 = an epoch ends when all its results are in; late results still count
    run_baseline: bool = True          # run the unchanged codebase once, so "beats the baseline" is measured
    max_ideation_failures: int = 5     # failed ideation calls per epoch before the epoch goes on with fewer ideas
    # the ideator's extended-thinking budget (tokens) per epoch, the last value for every later epoch (the
    # paper's release: [3000, 1500]); () = llm.ideator.thinking_budget_tokens in every epoch; anthropic only
    thinking_budget_by_epoch: tuple[int, ...] = ()
    seed: int = 0
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.epochs < 1 or self.ideas_per_epoch < 1 or self.ideas_per_call < 1:
            raise ConfigError("search.epochs, ideas_per_epoch and ideas_per_call must be at least 1")
        if any(b < 0 for b in self.thinking_budget_by_epoch):
            raise ConfigError(f"search.thinking_budget_by_epoch={list(self.thinking_budget_by_epoch)}: budgets are "
                              f"tokens >= 0 (0 = no thinking in that epoch)")

    def thinking_budget(self, epoch: int) -> int | None:
        """The ideator's thinking budget in `epoch`; None = the ideator's own settings."""
        budgets = self.thinking_budget_by_epoch
        return budgets[min(epoch, len(budgets) - 1)] if budgets else None


@dataclass(frozen=True)
class BudgetConfig:
    gpu_hours: float = 0.0             # 0 = no cap; at the cap no new work starts, running jobs finish
    llm_usd: float = 0.0               # 0 = no cap; overrides llm.spend_cap_usd when set


@dataclass(frozen=True)
class SearchRunConfig(RunConfig):
    run_dir: str = ""                  # "" = runs/<config file name>
    search: SearchConfig = field(default_factory=SearchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    use_real_llm_if_key: bool = False  # quickstart: a configured API key replaces the bundled replay
    serve_llm: ServeConfig = field(default_factory=ServeConfig)   # run the ideator/implementer model on your GPUs
    wandb: WandbSettings = field(default_factory=WandbSettings)   # optional W&B logging (off by default)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_epoch_budgets(self.search, self.llm.ideator)


def check_epoch_budgets(search: SearchConfig, ideator: LLMSettings) -> None:
    """Per-epoch thinking budgets are Anthropic's extended thinking: OpenAI reasoning models take no token budget
    (their knob is reasoning_effort), and an OpenAI-compatible server has no standard one. Each budget must also
    fit the ideator's temperature and max_tokens. LLMConfigError is a ValueError: the loader names the file."""
    budgets = search.thinking_budget_by_epoch
    if not budgets:
        return
    if ideator.provider != "anthropic":
        raise LLMConfigError(f"search.thinking_budget_by_epoch applies to anthropic ideators only (llm.ideator."
                             f"provider is {ideator.provider!r}): remove it, or for an OpenAI reasoning model set "
                             f"llm.ideator.reasoning_effort instead")
    for budget in budgets:
        try:
            check_thinking(dataclasses.replace(ideator, thinking_budget_tokens=budget))
        except LLMConfigError as exc:
            raise LLMConfigError(f"search.thinking_budget_by_epoch (with llm.ideator): {exc}") from exc
