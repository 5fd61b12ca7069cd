"""Opening a run directory: resolved config written once, environment snapshot, LLM clients, the cluster."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from toolkit import fsio, jobenv, pins
from toolkit.cluster import confine
from toolkit.cluster.base import make_cluster
from toolkit.cluster.slurm import check_request
from toolkit.config import RunConfig, from_dict, load_yaml, to_dict
from toolkit.envs import EnvSpec, data_dirs, load_env, tree_sha256
from toolkit.errors import ConfigError, EnvError
from toolkit.execute.implementer import Implementer, Site, preflight
from toolkit.execute.pipeline import Parts
from toolkit.layout import RunLayout
from toolkit.llm.base import ChatRequest, LLMClient, LLMReply, LLMSettings, SpendMeter, make_client
from toolkit.state import load_state


def load_run_config(path: Path | None, cls: type = RunConfig) -> Any:
    """The config file as `cls`; an empty file (or /dev/null) is an error, not a run of every default."""
    if path is None:
        return cls()
    data = load_yaml(path)
    if not data:
        raise ConfigError(f"{path}: the config is empty; a run needs at least `env:` and its `llm:` settings "
                          f"(see configs/quickstart.yaml)")
    return with_replay_files_found(from_dict(cls, data, str(path)), path)


def with_replay_files_found(cfg: Any, config: Path) -> Any:
    """A relative `replay_file` is looked for from the current directory, then beside the config and one level
    up (so `configs/replay/x.jsonl` works from a checkout's root and from an installed package alike)."""
    roles = {}
    for role in ("ideator", "implementer"):
        settings = getattr(cfg.llm, role)
        roles[role] = dataclasses.replace(settings, replay_file=_found(settings.replay_file, config))
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, **roles))


def _found(relative: str, config: Path) -> str:
    if not relative or Path(relative).is_absolute() or Path(relative).exists():
        return relative
    here = config.resolve().parent
    for base in (here, here.parent):
        if (base / relative).exists():
            return str(base / relative)
    return relative


def check_inputs(cfg: RunConfig) -> None:
    """Before a run directory is created: the environment loads, and both LLM clients build (a missing key,
    replay file or provider fails here; a served model gets its endpoint later, so it is not checked)."""
    spec = load_env(cfg.env, smoke=cfg.smoke)
    if cfg.cluster.cluster == "slurm":
        refused = check_request(cfg.cluster, spec.resources)
        if refused:
            raise ConfigError(f"cluster: SLURM refuses this run's job request (cluster.partition, account, qos, "
                              f"sbatch_extra or the env's resources); nothing was submitted:\n{refused}")
    if getattr(getattr(cfg, "serve_llm", None), "model", ""):
        return
    for settings in (cfg.llm.ideator, cfg.llm.implementer):
        make_client(settings)


C = TypeVar("C", bound=RunConfig)


def save_config(layout: RunLayout, cfg: C) -> C:
    """The resolved config is written once; a restart reuses it (flags cannot silently change a run)."""
    if layout.config.exists():
        return from_dict(type(cfg), load_yaml(layout.config), str(layout.config))
    fsio.atomic_write_text(layout.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return cfg


def snapshot_env(layout: RunLayout, cfg: RunConfig) -> EnvSpec:
    """Copy env.yaml + the pristine codebase into the run: jobs and the eval use this copy, never the source."""
    source = load_env(cfg.env, smoke=cfg.smoke)
    if not layout.env_dir.exists():
        staging = layout.root / ".env-staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        raw = load_yaml(Path(source.root) / "env.yaml")
        fsio.atomic_write_text(staging / "env.yaml", yaml.safe_dump({**raw, "codebase": "code"}, sort_keys=False))
        for extra in Path(source.root).iterdir():  # prepare.py, README: files beside env.yaml (not directories)
            if extra.is_file() and not extra.is_symlink() and extra.name != "env.yaml":
                shutil.copy2(extra, staging / extra.name)
        shutil.copytree(source.code_dir, staging / "code", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        staging.rename(layout.env_dir)
    snap = load_env(str(layout.env_dir), smoke=cfg.smoke)
    _check_same_code(source, snap, layout)
    return snap


def _check_same_code(source: EnvSpec, snap: EnvSpec, layout: RunLayout) -> None:
    if tree_sha256(source.code_dir) != tree_sha256(snap.code_dir):
        print(f"note: {source.code_dir} changed since this run started; the run keeps using its snapshot "
              f"{layout.env_dir} (start a new run directory to use the new code)")


def check_sandbox(cfg: RunConfig) -> str:
    """The confinement candidate code will run under here (jobs resolve `auto` again on their node).
    `none` is allowed only when asked for by name, and said loudly."""
    mechanism = confine.resolve(cfg.sandbox)
    if mechanism == "none":
        print("WARNING: sandbox: none -- candidate code runs unconfined: it can read hidden data, write the "
              "run state and forge its score. Use it only for code you trust.", file=sys.stderr)
    return mechanism


def prepare_data(spec: EnvSpec, cfg: RunConfig) -> tuple[Path, Path]:
    """Run the env's `prepare` once (trusted: the snapshot's own code, before any candidate runs): it fills
    the public data dir (training reads it) and the hidden one (only the scorer is given it)."""
    public, hidden = data_dirs(cfg.data_dir, spec.name)
    if not spec.prepare.strip() or (public / pins.STAMP).exists():
        return public, hidden
    for folder in (public, hidden):
        folder.mkdir(parents=True, exist_ok=True)
    env = {**jobenv.job_environ(extra_allow=cfg.cluster.env_passthrough),
           **{k: str(v) for k, v in spec.env_vars.items()},
           "TOOLKIT_DATA_DIR": str(public), "TOOLKIT_HIDDEN_DIR": str(hidden), "PYTHONDONTWRITEBYTECODE": "1",
           **({"TOOLKIT_SMOKE": "1"} if cfg.smoke else {})}
    done = subprocess.run(["bash", "-c", spec.prepare], cwd=spec.code_dir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise EnvError(f"{Path(spec.root) / 'env.yaml'}: `prepare: {spec.prepare}` failed (exit {done.returncode}) "
                       f"in {spec.code_dir}:\n{(done.stdout + done.stderr)[-2000:]}\nfix the data preparation, "
                       f"or prepare {public} by hand and create {public / pins.STAMP}")
    fsio.atomic_write_text(public / pins.STAMP, f"prepared by `{spec.prepare}`\n")
    return public, hidden


def check_baseline(layout: RunLayout, spec: EnvSpec, cfg: RunConfig, public: Path, sandbox: str) -> None:
    """Once per run, before any idea is implemented: the environment's own codebase must pass its quick check.
    A broken environment (missing package, data, driver) otherwise fails every idea through every revision and
    spends the LLM budget on it."""
    stamp = layout.baseline_checked
    if stamp.exists() or not spec.quick_check.strip():
        return
    problem = preflight(spec.code_dir, spec, cfg.implement.quick_check_timeout_s, public, sandbox, site(cfg))
    if problem:
        raise EnvError(f"{Path(spec.root) / 'env.yaml'}: the unchanged codebase fails its own quick check, so no "
                       f"idea could pass it; nothing was sent to an LLM. Fix the environment, then rerun:\n{problem}")
    fsio.atomic_write_text(stamp, "the unchanged codebase passed its quick check\n")


def site(cfg: RunConfig) -> Site:
    return Site(cfg.cluster.env_passthrough, cfg.cluster.sandbox_read)


def llm_ledger(layout: RunLayout) -> Any:
    def on_reply(req: ChatRequest, reply: LLMReply) -> None:
        fsio.append_jsonl(layout.llm_calls, {"tag": req.tag, "status": reply.status, "reason": reply.reason[:300],
                                             "model": reply.model, "input_tokens": reply.input_tokens,
                                             "output_tokens": reply.output_tokens, "cost_usd": reply.cost_usd,
                                             "wall_s": reply.wall_s, "attempts": reply.attempts})
    return on_reply


def make_llm(settings: LLMSettings, meter: SpendMeter, layout: RunLayout) -> LLMClient:
    return make_client(settings, meter=meter, on_reply=llm_ledger(layout))


def open_run(run_dir: Path, cfg: RunConfig, adjust: Callable[[Any], Any] | None = None) -> Parts:
    """`adjust` changes the resolved config for this session only (e.g. a served model's fresh endpoint)."""
    layout = RunLayout(run_dir.resolve())   # jobs and confined steps run elsewhere: no relative paths
    layout.make()
    cfg = save_config(layout, cfg)
    cfg = adjust(cfg) if adjust is not None else cfg
    spec = snapshot_env(layout, cfg)
    sandbox = check_sandbox(cfg)
    public, hidden = prepare_data(spec, cfg)
    check_baseline(layout, spec, cfg, public, sandbox)
    meter = SpendMeter(cap_usd=spend_cap(cfg), spent_usd=load_state(layout).llm_spend_usd)
    llm = make_llm(cfg.llm.implementer, meter, layout)
    implementer = Implementer(spec, llm, cfg.implement, public, sandbox, site(cfg))
    cluster = make_cluster(layout.jobs, cfg.cluster)
    return Parts(layout=layout, cfg=cfg, spec=spec, implementer=implementer, cluster=cluster, meter=meter)


def spend_cap(cfg: RunConfig) -> float | None:
    budget = getattr(cfg, "budget", None)
    return (budget.llm_usd if budget is not None and budget.llm_usd else cfg.llm.spend_cap_usd) or None


DEFAULT_MODELS = {"ANTHROPIC_API_KEY": ("anthropic", "claude-sonnet-4-6"), "OPENAI_API_KEY": ("openai", "gpt-5")}


def prefer_real_llm(cfg: Any, environ: dict[str, str]) -> Any:
    """Quickstart: when an API key is configured, a real LLM replaces the bundled replay."""
    if not getattr(cfg, "use_real_llm_if_key", False):
        return cfg
    for key, (provider, model) in DEFAULT_MODELS.items():
        if environ.get(key):
            return with_llm(cfg, provider, model, None, "")
    return cfg


def with_llm(cfg: RunConfig, provider: str | None, model: str | None, base_url: str | None,
             replay: str | None) -> RunConfig:
    """Apply the --llm/--model/--base-url/--replay flags to both roles."""
    given: dict[str, str | None] = dict(provider=provider, model=model, base_url=base_url, replay_file=replay)
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if not changes:
        return cfg
    llm = dataclasses.replace(cfg.llm, ideator=dataclasses.replace(cfg.llm.ideator, **changes),
                              implementer=dataclasses.replace(cfg.llm.implementer, **changes))
    return dataclasses.replace(cfg, llm=llm)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
