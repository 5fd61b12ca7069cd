"""Config, environment contract, reward expressions, job environment: fast unit tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import TOY_ENV, copy_env
from toolkit import jobenv
from toolkit.config import ClusterConfig, RunConfig, from_dict
from toolkit.envs import compute_reward, load_env
from toolkit.errors import ConfigError, EnvError


def test_unknown_config_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"cluster": {"partiton": "h100"}}, "run.yaml")
    message = str(err.value)
    assert "run.yaml.cluster" in message and "partiton" in message and "partition (default '')" in message


def test_config_type_and_choice_errors() -> None:
    with pytest.raises(ConfigError, match="poll_s"):
        from_dict(RunConfig, {"cluster": {"poll_s": "fast"}}, "x.yaml")
    with pytest.raises(ConfigError, match="slurm, local, debug"):
        from_dict(RunConfig, {"cluster": {"cluster": "kubernetes"}}, "x.yaml")
    cfg = from_dict(RunConfig, {"cluster": {"poll_s": 2}, "llm": {"implementer": {"model": "m"}}}, "x.yaml")
    assert cfg.cluster.poll_s == 2.0 and cfg.llm.implementer.model == "m"
    assert isinstance(cfg.cluster, ClusterConfig)


def test_shipped_and_user_envs_load() -> None:
    toy = load_env(str(TOY_ENV))
    assert toy.metric == "val_mse" and toy.locked == ("eval.py", "data.py")
    smoke = load_env(str(TOY_ENV), smoke=True)
    assert smoke.env_vars["TOY_STEPS"] == "20" and toy.env_vars["TOY_STEPS"] == "50"


@pytest.mark.parametrize("edit, complaint", [
    ({"reward": "__import__('os').system('true')"}, "reward"),
    ({"locked": ["eval.py", "nope.py"]}, "nope.py"),
    ({"hidden": ["train.py"]}, "hidden file 'train.py'"),
    ({"codebase": "missing"}, "codebase directory"),
    ({"direction": "up"}, "direction"),
    ({"gpus": 1}, "unknown key(s) gpus"),
    ({"references": {"paper: best": "68.8%"}}, "references.paper: best: expected float, got '68.8%'"),
    ({"resources": {"run_budget_s": "long"}}, "run_budget_s: expected float"),
])
def test_bad_env_yaml_names_file_and_key(tmp_path: Path, edit: dict, complaint: str) -> None:
    env = copy_env(tmp_path / "env")
    data = yaml.safe_load((env / "env.yaml").read_text())
    (env / "env.yaml").write_text(yaml.safe_dump({**data, **edit}))
    with pytest.raises(EnvError) as err:
        load_env(str(env))
    assert str(env / "env.yaml") in str(err.value) and complaint in str(err.value)


def test_unknown_env_name_lists_shipped() -> None:
    with pytest.raises(EnvError, match="tiny_lm"):
        load_env("no_such_env")


def test_reward_expressions() -> None:
    assert compute_reward("1/val_loss", {"val_loss": 4.0}) == 0.25
    assert compute_reward("max(acc, 0) * 100", {"acc": 0.5}) == 50.0
    with pytest.raises(ZeroDivisionError):
        compute_reward("1/val_loss", {"val_loss": 0})
    with pytest.raises(ValueError):
        compute_reward("val_loss.__class__", {"val_loss": 1.0})


def test_job_environment_drops_secrets() -> None:
    source = {"PATH": "/usr/bin", "HOME": "/root", "ANTHROPIC_API_KEY": "sk", "OPENAI_API_KEY": "sk",
              "HF_TOKEN": "hf", "SLURM_JOB_ID": "3", "TOOLKIT_SECRET_KEY": "x", "CUDA_VISIBLE_DEVICES": "0",
              "AWS_SECRET_ACCESS_KEY": "a", "RANDOM_VAR": "r"}
    env = jobenv.job_environ(source)
    assert set(env) == {"PATH", "HOME", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"}


def test_sbatch_runs_in_the_allow_listed_environment(tmp_path: Path) -> None:
    """sbatch gets no key and none of a parent job's SLURM_* (the daemon may itself run in a job); its own
    settings pass, except those that would make SLURM load the login environment on the node."""
    import submitit

    from toolkit.cluster.slurm import sbatch_environment
    source = {"PATH": "/usr/bin", "HOME": "/root", "OPENAI_API_KEY": "sk", "SBATCH_ACCOUNT": "lab",
              "SBATCH_EXPORT": "NONE", "SBATCH_GET_USER_ENV": "1", "SLURM_CONF": "/etc/slurm/slurm.conf",
              "SLURM_JOB_ID": "7", "SLURM_MEM_PER_CPU": "4000", "SBATCH_AUTH_TOKEN": "t", "RANDOM_VAR": "r",
              "KRB5CCNAME": "FILE:/tmp/krb5cc_1"}
    env = jobenv.sbatch_environ(source)
    assert set(env) == {"PATH", "HOME", "SBATCH_ACCOUNT", "SLURM_CONF", "KRB5CCNAME"}
    plain = submitit.SlurmExecutor(folder=tmp_path)
    with sbatch_environment(env):
        command = plain._make_submission_command(tmp_path / "job.sh")
    assert command[:2] == ["env", "-i"] and command[-2:] == ["sbatch", str(tmp_path / "job.sh")]
    assert "SBATCH_ACCOUNT=lab" in command and not any(c.split("=")[-1] == "sk" for c in command)
    assert plain._make_submission_command(tmp_path / "job.sh") == ["sbatch", str(tmp_path / "job.sh")]


def test_sbatch_environments_of_overlapping_threads_stay_apart(tmp_path: Path) -> None:
    """Two threads submit at once (two runs in one process, as the SLURM fault test does): each sbatch gets
    its own thread's environment, a thread outside any block gets submitit's bare command, and nothing
    outlives a block. (Swapping the method per block once left one block's environment on every later sbatch.)"""
    import threading

    import submitit

    from toolkit.cluster.slurm import sbatch_environment
    plain, job = submitit.SlurmExecutor(folder=tmp_path), tmp_path / "job.sh"
    inside, release, seen = threading.Barrier(3), threading.Event(), {}

    def submit(name: str) -> None:
        with sbatch_environment({"PATH": "/usr/bin", "WHO": name}):
            inside.wait(timeout=10)
            release.wait(timeout=10)
            seen[name] = plain._make_submission_command(job)

    threads = [threading.Thread(target=submit, args=(name,), daemon=True) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    inside.wait(timeout=10)  # both blocks are open at once
    seen["outside"] = plain._make_submission_command(job)
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert seen["outside"] == ["sbatch", str(job)]
    for name in ("a", "b"):
        assert f"WHO={name}" in seen[name] and len([c for c in seen[name] if c.startswith("WHO=")]) == 1
    assert plain._make_submission_command(job) == ["sbatch", str(job)]
