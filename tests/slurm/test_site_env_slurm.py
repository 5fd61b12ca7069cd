"""The site's job environment on the dev SLURM cluster: a run script that calls a module-style shell function
(defined through BASH_ENV, as Lmod and Environment Modules do for non-interactive shells) works when the site's
variables are passed and its module tree is readable to the sandbox; `cluster.setup` lines run before the
worker; `cluster.env_passthrough` adds names; a secret-named one is refused at load."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from helpers import copy_env, make_diff, scripted
from toolkit import jobenv
from toolkit.config import RunConfig, from_dict
from toolkit.errors import ConfigError
from toolkit.loop import execute_ideas
from toolkit.records import Idea
from toolkit.testing.fake_llm import FakeLLMServer

MODULE_INIT = """# a stand-in for a site's module system: `module load NAME` exports what the module would
module() { if [ "$1" = load ]; then export LOADED_MODULE="$2"; else echo "module: $1?" >&2; return 1; fi; }
"""


def site_env(tmp_path: Path) -> Path:
    env = copy_env(tmp_path / "env")
    spec = yaml.safe_load((env / "env.yaml").read_text())
    spec["run"] = ('module load toy/1.0 && test "$LOADED_MODULE" = toy/1.0 && test "$SITE_SETUP" = ran '
                   '&& test "$SITE_FLAG" = yes && python train.py')
    (env / "env.yaml").write_text(yaml.safe_dump(spec))
    return env


def config(env: Path, base_url: str, modules: Path, readable: bool) -> RunConfig:
    return from_dict(RunConfig, {
        "env": str(env), "implement": {"samples": 1, "revisions": 0},
        "llm": {"implementer": {"provider": "anthropic", "model": "claude-sonnet-4-6", "base_url": base_url}},
        "cluster": {"cluster": "slurm", "partition": "debug", "poll_s": 1.0, "env_passthrough": ["SITE_*"],
                    "setup": ["export SITE_SETUP=ran"], "sandbox_read": [str(modules)] if readable else []}}, "t")


@pytest.mark.slurm
def test_module_functions_and_site_variables_reach_the_run(tmp_path: Path, monkeypatch) -> None:
    modules = tmp_path / "site-modules"
    modules.mkdir()
    (modules / "init.sh").write_text(MODULE_INIT)
    monkeypatch.setenv("BASH_ENV", str(modules / "init.sh"))
    monkeypatch.setenv("SITE_FLAG", "yes")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    env = site_env(tmp_path)
    diff = make_diff(env / "code", "train.py", "LR = 0.05 ", "LR = 0.1 ")
    idea = [Idea(idea_id="lr", text="IDEA-LR: raise the learning rate")]
    with FakeLLMServer(scripted({"IDEA-LR": lambda _: diff})) as server:
        ok = execute_ideas(tmp_path / "ok", config(env, server.base_url, modules, True), idea)
        unreadable = execute_ideas(tmp_path / "no-read", config(env, server.base_url, modules, False), idea)
    assert ok.candidates["lr"].status == "ok", ok.candidates["lr"]
    # the same run with the module tree out of the sandbox's reach: bash cannot source BASH_ENV, no `module`
    failed = unreadable.candidates["lr"]
    assert failed.status == "failed" and "exited with code" in failed.reason


def test_secret_named_passthrough_is_refused_and_credentials_never_travel() -> None:
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        from_dict(RunConfig, {"cluster": {"env_passthrough": ["SITE_*", "WANDB_API_KEY"]}}, "t")
    env = jobenv.job_environ({"https_proxy": "http://user:hunter2@proxy:3128", "http_proxy": "http://proxy:3128",
                              "MODULEPATH": "/apps/modules", "SITE_X": "1"}, extra_allow=("SITE_*",))
    assert "https_proxy" not in env and env["http_proxy"] == "http://proxy:3128"
    assert env["MODULEPATH"] == "/apps/modules" and env["SITE_X"] == "1"


@pytest.mark.slurm
def test_a_request_slurm_refuses_exits_2_before_anything(tmp_path: Path, capsys) -> None:
    from toolkit.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"env": str(copy_env(tmp_path / "env")),
                                      "cluster": {"cluster": "slurm", "partition": "no-such-partition"},
                                      "llm": {"implementer": {"provider": "replay", "replay_file": "x"}}}))
    ideas = tmp_path / "ideas.jsonl"
    ideas.write_text('{"idea": "x"}\n')
    assert main(["execute", str(ideas), "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    out = capsys.readouterr().out.replace("\n", "")
    assert "SLURM refuses" in out and "no-such-partition" in out and not (tmp_path / "run").exists()


@pytest.mark.slurm
def test_a_batch_over_max_array_size_goes_out_as_several_arrays(tmp_path: Path) -> None:
    """Seven candidates with cluster.max_array_size 3 (a site with a low MaxArraySize): three arrays under one
    name, every task runs once, and a restart finds all seven by that name."""
    from toolkit.cluster.slurm import SlurmCluster, max_array_size
    from toolkit.cluster.worker import WorkerTask
    from toolkit.config import ClusterConfig
    from toolkit.envs import load_env

    assert max_array_size() >= 1
    env = load_env(str(copy_env(tmp_path / "env")))
    cluster = SlurmCluster(tmp_path / "jobs", ClusterConfig(cluster="slurm", partition="debug", max_array_size=3))
    (tmp_path / "jobs").mkdir()
    tasks = []
    for n in range(7):
        cand = tmp_path / "candidates" / f"c{n}"
        (cand / "code").mkdir(parents=True)
        tasks.append(WorkerTask(cand_dir=str(cand), env_dir=str(env.root)))
    name = f"toolkit-split-{os.urandom(4).hex()}"
    ids = cluster.submit(tasks, env.resources, name)
    assert len(ids) == 7 and len({i.split("_")[0] for i in ids}) == 3
    assert cluster.find_jobs(name) == ids
    deadline = time.time() + 180          # and every task runs: its worker writes a result (failed: empty code)
    while time.time() < deadline and not all(Path(t.cand_dir, "result.json").exists() for t in tasks):
        time.sleep(1)
    assert all(Path(t.cand_dir, "result.json").exists() for t in tasks)
