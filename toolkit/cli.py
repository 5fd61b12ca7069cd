"""The `toolkit` command line."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from toolkit.cluster import confine
from toolkit.cluster.serve import KEY_ENV, start_server, stop_server, wait_for_endpoint
from toolkit.config import CLUSTERS, ClusterConfig, SearchRunConfig, ServeConfig
from toolkit.disk import tree_bytes
from toolkit.errors import ConfigError, ToolkitError
from toolkit.layout import RunLayout
from toolkit.loop import execute_ideas, run_dir_for, run_search
from toolkit.records import Idea
from toolkit.report import dashboard
from toolkit.rl.cli import add_rl_parser
from toolkit.rl.report import add_report_parser
from toolkit.runs import check_inputs, load_run_config, prefer_real_llm, with_llm
from toolkit.shipped import config_path
from toolkit.state import load_state

console = Console()
PROVIDERS = ("anthropic", "openai", "openai-compatible", "replay")


def read_ideas(path: Path) -> list[Idea]:
    """IDEAS.jsonl: one {"idea": "..."} per line; ids follow line order so a rerun maps to the same ids."""
    ideas: list[Idea] = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["idea"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: expected a JSON object with an \"idea\" string ({exc!r})") from exc
        ideas.append(Idea(idea_id=f"idea-{len(ideas):04d}", text=str(text), origin="user"))
    if not ideas:
        raise ConfigError(f"{path}: no ideas found (one JSON object per line: {{\"idea\": \"...\"}})")
    return ideas


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", choices=CLUSTERS)
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--array-parallelism", type=int)


def add_run_flags(p: argparse.ArgumentParser, env_help: str) -> None:
    p.add_argument("--env", help=env_help)
    p.add_argument("--smoke", action="store_true", help="use the environment's CPU smoke settings")
    p.add_argument("--samples", type=int, help="diffs sampled in parallel per idea (default 10)")


def add_llm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm", choices=PROVIDERS, help="provider for both ideator and implementer")
    p.add_argument("--model")
    p.add_argument("--base-url")
    p.add_argument("--replay", help="replay file of recorded responses (with --llm replay)")


def apply_flags(cfg, args: argparse.Namespace):
    cluster = dataclasses.replace(cfg.cluster, **{k: v for k, v in dict(
        cluster=args.cluster, partition=args.partition, account=args.account, qos=args.qos,
        array_parallelism=args.array_parallelism).items() if v is not None})
    cfg = dataclasses.replace(cfg, cluster=cluster)
    if getattr(args, "env", None):
        cfg = dataclasses.replace(cfg, env=args.env)
    if getattr(args, "smoke", False):
        cfg = dataclasses.replace(cfg, smoke=True)
    if getattr(args, "samples", None):
        cfg = dataclasses.replace(cfg, implement=dataclasses.replace(cfg.implement, samples=args.samples))
    return with_llm(cfg, args.llm, args.model, args.base_url, args.replay)


def cmd_execute(args: argparse.Namespace) -> int:
    cfg = apply_flags(load_run_config(config_path(args.config) if args.config else None), args)
    ideas = read_ideas(Path(args.ideas))
    check_inputs(cfg)
    state = execute_ideas(Path(args.out), cfg, ideas, live=True)
    console.print(dashboard.execute_view(state))
    rate = state.execution_rate()
    console.print(f"execution rate: {'-' if rate is None else f'{rate:.0%}'} "
                  f"({sum(1 for c in state.candidates.values() if c.status == 'ok')}/{len(state.candidates)} ok)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    layout = RunLayout(Path(args.run_dir))
    if not layout.events.exists():
        raise ConfigError(f"{layout.events}: not found; is {layout.root} a toolkit run directory?")
    state = load_state(layout)
    view = dashboard.search_view(state) if state.search.started else dashboard.execute_view(state)
    console.print(view)
    console.print(dashboard.disk_line(state, tree_bytes(layout.root)))
    holder = layout.lock.read_text().strip() if layout.lock.exists() else ""
    console.print(f"daemon: {'running (' + holder + ')' if holder else 'not running'}")
    return 0


def cmd_evolve(args: argparse.Namespace) -> int:
    config = config_path(args.config) if args.config else None
    cfg = apply_flags(load_run_config(config, SearchRunConfig), args)
    cfg = prefer_real_llm(cfg, dict(os.environ))
    check_inputs(cfg)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(cfg, config)
    if cfg.llm.ideator.provider == "replay":
        console.print("[bold yellow]Replay mode:[/] the LLM answers come from a bundled recording "
                      f"({cfg.llm.ideator.replay_file}); set ANTHROPIC_API_KEY or OPENAI_API_KEY for a live model.")
    console.print(f"run directory: {run_dir}  (rerun the same command to resume; `toolkit status {run_dir}`)")
    state = run_search(run_dir, cfg, console, live=console.is_terminal)
    rate = state.execution_rate()
    console.print(f"execution rate: {'-' if rate is None else f'{rate:.0%}'}; LLM ${state.llm_spend_usd:.2f}; "
                  f"GPU-hours {state.gpu_hours:.2f}")
    return 0


def cmd_serve_llm(args: argparse.Namespace) -> int:
    cluster = ClusterConfig(cluster=args.cluster or "slurm", partition=args.partition or "")
    run_dir = Path(args.run_dir or f"runs/llm-{args.model.replace('/', '_')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.stop:
        stop_server(cluster, run_dir)
        console.print(f"cancelled the server job recorded in {run_dir / 'llm_server.json'}")
        return 0
    changes = {k: v for k, v in dict(model=args.model, partition=args.partition, gpus=args.gpus, port=args.port,
                                     command=args.command, advertise_host=args.advertise_host).items() if v}
    serve = ServeConfig(**changes)
    job_id = start_server(serve, cluster, run_dir)
    url = wait_for_endpoint(serve, cluster, run_dir, job_id, console)
    console.print(f"{serve.model} answering at {url} (job {job_id}); endpoint recorded in "
                  f"{run_dir / 'llm_endpoint.json'}")
    console.print(f"use it with: --llm openai-compatible --model {serve.model} --base-url {url}, and its key in "
                  f"the environment: export {KEY_ENV}=\"$(cat {run_dir / 'llm_secret'})\" (api_key_env: {KEY_ENV})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description="Execution-grounded automated AI research on SLURM")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="fewer log lines (warnings only)")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="ideas in, one verified score per idea out")
    ex.add_argument("ideas", help="IDEAS.jsonl with one {\"idea\": \"...\"} per line")
    add_run_flags(ex, "shipped env name or a directory with env.yaml (default tiny_lm)")
    ex.add_argument("--out", required=True, help="run directory (created; rerun the same command to resume)")
    ex.add_argument("--config", help="YAML run config (flags override it)")
    add_cluster_flags(ex)
    add_llm_flags(ex)
    ex.set_defaults(func=cmd_execute)
    ev = sub.add_parser("evolve", help="evolutionary (or best-of-N) search as a resumable daemon")
    ev.add_argument("--config",
                    help="search config YAML, or a shipped config's name (configs/quickstart.yaml or quickstart)")
    ev.add_argument("--run-dir", help="run directory (default: run_dir in the config, else runs/<config name>)")
    add_run_flags(ev, "override the config's environment")
    add_cluster_flags(ev)
    add_llm_flags(ev)
    ev.set_defaults(func=cmd_evolve)
    sv = sub.add_parser("serve-llm", help="start a vLLM OpenAI-compatible server as a SLURM job and wait for it",
                        description="Start a private vLLM server as a SLURM job. It binds loopback when this "
                        "command runs on the server's node, else the node's own address (never 0.0.0.0 unless "
                        "the config's bind_host says so), on a port found free at start; its API key is made "
                        "here, kept in RUN_DIR/llm_secret (0600) and handed to the server through its "
                        "environment (VLLM_API_KEY), never a command line. The endpoint is published only once "
                        "the server answering proves it holds that key.")
    sv.add_argument("--model", required=True)
    sv.add_argument("--partition")
    sv.add_argument("--cluster", choices=CLUSTERS)
    sv.add_argument("--gpus", type=int)
    sv.add_argument("--port", type=int, help="preferred port (default: one found free on the node)")
    sv.add_argument("--command", help="server command template ({model} {port} {bind} {gpus})")
    sv.add_argument("--advertise-host", help="host name the clients use (default: the node's name)")
    sv.add_argument("--run-dir", help="where the endpoint is recorded (default runs/llm-<model>)")
    sv.add_argument("--stop", action="store_true", help="cancel the server job recorded in --run-dir")
    sv.set_defaults(func=cmd_serve_llm)
    add_report_parser(sub)
    add_rl_parser(sub)
    st = sub.add_parser("status", help="the tables of a running or finished run, from another shell")
    st.add_argument("run_dir")
    st.set_defaults(func=cmd_status)
    return parser


def setup_logging(verbose: int, quiet: int) -> None:
    """Plain log lines on stdout (a batch job's log interleaves them with everything else in order); without
    a terminal, progress comes this way (toolkit/progress.py)."""
    level = logging.INFO - 10 * (verbose - quiet) if verbose or quiet else logging.INFO
    logging.basicConfig(level=max(logging.DEBUG, min(logging.ERROR, level)), stream=sys.stdout,
                        format="%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if argv is None:   # a process of its own: it may hold API keys, which same-user processes must not read
        confine.harden_trusted()
    try:
        return args.func(args)
    except ToolkitError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
