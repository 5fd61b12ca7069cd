"""Research environments: load and validate `env.yaml`, hash locked files, compute rewards.

An environment is a directory with `env.yaml` and a codebase directory; see README "Environment contract".
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import hashlib
import math
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, EnvError
from toolkit.schema import from_dict, load_yaml
from toolkit.shipped import shipped

SHIPPED_ENVS = shipped("envs")
DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 4.0
    time_min: float = 10.0             # hard limit of the `run` command
    eval_time_min: float = 5.0         # hard limit of the locked `eval` command
    nodes: int = 1
    # the rule of a fixed-time budget: a run that ends later than this (training budget + start-up) is
    # `invalid`, since an edited train.py could otherwise buy its score with more time; 0 = no such rule
    run_budget_s: float = 0.0
    # the same rule for the eval: a scoring stage that takes longer is `invalid` (candidate code runs in the
    # eval's model child, and must not buy time there either); 0 = no such rule
    eval_budget_s: float = 0.0


@dataclass(frozen=True)
class EnvSpec:
    name: str
    description: str
    run: str
    eval: str
    metric: str
    reward: str
    codebase: str = "code"
    locked: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    quick_check: str = ""
    prepare: str = ""
    direction: str = "minimize"
    metric_range: tuple[float, float] = (-math.inf, math.inf)
    resources: Resources = field(default_factory=Resources)
    env_vars: dict[str, str] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    # published results in metric units ("paper: best human": 0.688); `toolkit report` sets the best found
    # against them (full runs only: smoke metrics are not comparable)
    references: dict[str, float] = field(default_factory=dict)
    # tree_sha256 of code/ as the references were measured: a run whose codebase differs (another
    # recipe) gets them marked as not comparable in its report; "" = not recorded (no such check)
    references_recipe: str = ""
    network: bool = False              # candidate code may open TCP connections (multi-process training)
    # what the search's ideator should look for (every fresh, exploit and explore prompt); never shown to the
    # implementer, which implements whatever idea it is given
    ideation_guidance: str = ""
    root: str = ""                     # the directory env.yaml was loaded from (filled in by load_env)

    @property
    def code_dir(self) -> Path:
        return Path(self.root) / self.codebase

    def better(self, a: float, b: float) -> bool:
        """Is metric value a better than b?"""
        return a < b if self.direction == "minimize" else a > b


SMOKE_KEYS = ("run", "eval", "quick_check", "prepare", "network", "env_vars", "resources", "metric_range")


def data_dirs(configured: str, env_name: str) -> tuple[Path, Path]:
    """(public, hidden): training reads the first; only the trusted scorer is given the second."""
    public = Path(configured).expanduser() if configured else Path("~/.cache/toolkit/data").expanduser() / env_name
    return public, public.with_name(public.name + ".hidden")


def resolve_env_dir(name_or_path: str) -> Path:
    """A shipped env name (envs/<name>) or a path to a user's own environment directory."""
    path = Path(name_or_path).expanduser()
    if (path / "env.yaml").is_file():
        return path.resolve()
    found = SHIPPED_ENVS / name_or_path
    if (found / "env.yaml").is_file():
        return found
    known = ", ".join(sorted(p.name for p in SHIPPED_ENVS.glob("*") if (p / "env.yaml").is_file()))
    raise EnvError(f"environment {name_or_path!r}: no env.yaml at {path / 'env.yaml'} and no shipped env of "
                   f"that name (shipped: {known}); pass a directory that contains env.yaml")


def load_env(name_or_path: str, smoke: bool = False) -> EnvSpec:
    root = resolve_env_dir(name_or_path)
    yaml_path = root / "env.yaml"
    data = load_yaml(yaml_path)
    try:
        spec = from_dict(EnvSpec, {**data, "root": str(root)}, str(yaml_path))
    except ConfigError as exc:
        raise EnvError(str(exc)) from exc
    if smoke:
        spec = apply_smoke(spec, yaml_path)
    validate_env(spec, yaml_path)
    return spec


def apply_smoke(spec: EnvSpec, yaml_path: Path) -> EnvSpec:
    unknown = sorted(set(spec.smoke) - set(SMOKE_KEYS))
    if unknown:
        raise EnvError(f"{yaml_path}: smoke: unknown key(s) {', '.join(unknown)}; valid: {', '.join(SMOKE_KEYS)}")
    changes: dict[str, Any] = dict(spec.smoke)
    if "resources" in changes:
        merged = {**dataclasses.asdict(spec.resources), **changes["resources"]}
        changes["resources"] = from_dict(Resources, merged, f"{yaml_path}: smoke.resources")
    if "env_vars" in changes:
        changes["env_vars"] = {**spec.env_vars, **changes["env_vars"]}
    if "metric_range" in changes:
        changes["metric_range"] = tuple(changes["metric_range"])
    return dataclasses.replace(spec, **changes)


def validate_env(spec: EnvSpec, yaml_path: Path) -> None:
    problems = _env_problems(spec)
    if problems:
        raise EnvError(f"{yaml_path}: " + "; ".join(problems))


def _env_problems(spec: EnvSpec) -> list[str]:
    problems = []
    if not spec.code_dir.is_dir():
        problems.append(f"codebase directory {spec.code_dir} does not exist (key `codebase`)")
    if spec.direction not in DIRECTIONS:
        problems.append(f"direction must be one of {DIRECTIONS}, got {spec.direction!r}")
    for key in ("run", "eval", "metric", "reward", "description"):
        if not str(getattr(spec, key)).strip():
            problems.append(f"key `{key}` is required and empty")
    problems += [f"hidden file {h!r} must also be listed in `locked`" for h in spec.hidden if h not in spec.locked]
    if spec.code_dir.is_dir():
        problems += [f"locked pattern {p!r} matches no file in {spec.code_dir}" for p in spec.locked
                     if not locked_files(spec.code_dir, (p,))]
    problems += _reward_problems(spec)
    if spec.resources.nodes != 1:
        problems.append(f"resources.nodes={spec.resources.nodes}: multi-node candidates are not supported yet (SLURM "
                        "would start the whole worker on every node: two runs, two evals, two results); use "
                        "nodes: 1 with up to a node's GPUs (nanogpt's 8 x H100 fit one node)")
    if len(spec.metric_range) != 2 or spec.metric_range[0] > spec.metric_range[1]:
        problems.append(f"metric_range must be [low, high], got {list(spec.metric_range)}")
    problems += [f"references: {name!r} must be a number in metric units, got {value!r}"
                 for name, value in spec.references.items()
                 if not isinstance(value, (int, float)) or isinstance(value, bool)]
    return problems


def _reward_problems(spec: EnvSpec) -> list[str]:
    try:
        names = expression_names(spec.reward)
    except (SyntaxError, ValueError) as exc:
        return [f"reward {spec.reward!r} is not a valid arithmetic expression: {exc}"]
    return [] if spec.metric in names or not names else [f"reward {spec.reward!r} does not use metric {spec.metric!r}"]


def list_files(code_dir: Path) -> list[str]:
    """All regular files and links under code_dir, as sorted relative posix paths (bytecode caches skipped)."""
    paths = (p for p in code_dir.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(p.relative_to(code_dir).as_posix() for p in paths
                  if "__pycache__" not in p.parts and p.suffix != ".pyc")


def is_locked(rel_path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(rel_path == p or fnmatch.fnmatch(rel_path, p) for p in patterns)


def locked_files(code_dir: Path, patterns: tuple[str, ...] | list[str]) -> list[str]:
    return [f for f in list_files(code_dir) if is_locked(f, patterns)]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(code_dir: Path, rel_paths: list[str]) -> dict[str, str]:
    """sha256 of each path; a missing file hashes to "missing" (so a deletion shows as a change)."""
    return {p: file_sha256(code_dir / p) if (code_dir / p).is_file() else "missing" for p in rel_paths}


def strip_hidden(code_dir: Path, hidden: tuple[str, ...] | list[str]) -> None:
    """Hidden files (the eval) never sit in a directory candidate code can read."""
    for rel in locked_files(code_dir, hidden):
        (code_dir / rel).unlink(missing_ok=True)


def tree_sha256(code_dir: Path) -> str:
    """One hash over every file's path and content: the code hash recorded with each result."""
    h = hashlib.sha256()
    for rel in list_files(code_dir):
        path = code_dir / rel
        # a link is hashed by where it points, never followed (a link to /dev/zero must not hang the worker)
        digest = "link:" + os.readlink(path) if path.is_symlink() else file_sha256(path)
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


# ---- reward expressions: arithmetic over the eval's numeric metrics, nothing else --------------------
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow,
}
_FUNCS: dict[str, Callable[..., float]] = {"log": math.log, "exp": math.exp, "sqrt": math.sqrt,
                                           "min": min, "max": max, "abs": abs}


def expression_names(expr: str) -> set[str]:
    tree = ast.parse(expr, mode="eval")
    _check_nodes(tree)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(_FUNCS)


def _check_nodes(tree: ast.AST) -> None:
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd, ast.Constant, ast.Name,
               ast.Load, ast.Call, *_BINOPS)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ValueError(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise ValueError(f"only calls to {', '.join(_FUNCS)} are allowed")


def compute_reward(expr: str, metrics: dict[str, Any]) -> float:
    """Evaluate the reward expression; raises ValueError/ZeroDivisionError/KeyError on bad metrics."""
    tree = ast.parse(expr, mode="eval")
    _check_nodes(tree)
    return float(_eval(tree.body, metrics))


def _eval(node: ast.AST, metrics: dict[str, Any]) -> float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float, str, bytes)):
            return float(node.value)
        raise TypeError(f"{node.value!r} is not a number")
    if isinstance(node, ast.Name):
        return float(metrics[node.id])
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, metrics)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, metrics), _eval(node.right, metrics))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(_FUNCS[node.func.id](*(_eval(a, metrics) for a in node.args)))
