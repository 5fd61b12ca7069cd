"""Golden outputs: the sbatch script of a GPU array, and the Rich views of a search with certification.
A change in either shows up as a diff here (regenerate the sbatch golden with TOOLKIT_REGOLD=1)."""
from __future__ import annotations

import os
from pathlib import Path

import submitit
from rich.console import Console

from toolkit.cluster.slurm import SlurmCluster
from toolkit.config import ClusterConfig
from toolkit.envs import Resources
from toolkit.report import dashboard
from toolkit.state import RunState

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def sbatch_text(tmp_path: Path) -> str:
    cfg = ClusterConfig(cluster="slurm", partition="h100", account="lab", qos="high", array_parallelism=16,
                        time_margin_min=5, sbatch_extra={"constraint": "h100"},
                        setup=("module load cuda/12.4", "source /apps/venv/bin/activate"))
    resources = Resources(gpus=8, cpus=32, mem_gb=400, time_min=30, eval_time_min=10, nodes=1)
    params = SlurmCluster(tmp_path, cfg).parameters(resources, 40, "toolkit-golden-0a1b2c3d")
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**params)
    slurm = executor._executor
    slurm.parameters["map_count"] = 40
    text = slurm._make_submission_file_text("python -u -m submitit.core._submit '%j'", "UID")
    return text.replace(str(tmp_path), "JOBS_DIR")


def test_the_sbatch_script_of_a_gpu_array_is_the_golden_one(tmp_path: Path) -> None:
    text = sbatch_text(tmp_path)
    golden = GOLDEN / "gpu_array.sbatch"
    if os.environ.get("TOOLKIT_REGOLD"):
        golden.write_text(text)
    assert text == golden.read_text()
    for line in ("#SBATCH --array=0-39%16", "#SBATCH --export=ALL", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=45", "#SBATCH --signal=USR2@", "module load cuda/12.4", "#SBATCH --constraint=h100"):
        assert line in text, line


def search_state() -> RunState:
    events = [
        {"kind": "search_started", "t": 0, "search": {"epochs": 3}},
        {"kind": "epoch_started", "t": 0, "epoch": 1, "plan": [["exploit", 2]]},
        {"kind": "idea", "t": 0, "idea_id": "baseline", "text": "Baseline: the unchanged codebase.", "epoch": 0},
        {"kind": "idea", "t": 0, "idea_id": "e00-000", "text": "[bold]Cosine[/] decay: anneal the lr [/]", "epoch": 0},
        {"kind": "idea", "t": 0, "idea_id": "e00-001", "text": "Cosine decay, again", "epoch": 0,
         "duplicate_of": "e00-000", "duplicate_score": 0.91, "dup_policy": "skip"},
        {"kind": "result", "t": 0, "cid": "baseline", "status": "ok", "metric": 2.42, "reward": 1 / 2.42},
        {"kind": "result", "t": 0, "cid": "e00-000", "status": "ok", "metric": 2.30, "reward": 1 / 2.30},
        {"kind": "noise_floor", "t": 0, "n": 3, "mean": 2.43, "sd": 0.02, "mean_reward": 1 / 2.43,
         "seed_ignored": False, "runs": 3},
        {"kind": "replicas_planned", "t": 0, "purpose": "certify", "round": 0, "epoch": 0, "cids": ["e00-000"],
         "runs": [{"rid": "e00-000~s3", "parent": "e00-000", "seed": 3}]},
        {"kind": "verdict", "t": 0, "cid": "e00-000", "round": 0, "verdict": "certified", "n": 3, "mean": 2.31,
         "low": 2.28, "high": 2.34, "reward": 1 / 2.31, "p_value": 0.001, "reason": "..."},
    ]
    state = RunState()
    for event in events:
        state.apply(event)
    return state


def test_the_search_view_renders_certification_and_never_reads_ideas_as_markup() -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(dashboard.search_view(search_state()))
    text = console.export_text()
    assert "[bold]Cosine[/] decay" in text                       # LLM text shown as written
    assert "baseline noise floor: 2.4300 ± 0.0200 (sd over 3 seeds)" in text
    assert "best certified 0.4329 (e00-000, mean of 3 re-runs)" in text
    assert "2.3100 [2.2800, 2.3400]" in text and "certified" in text
    assert "duplicate (duplicate of e00-000)" in text
    assert "re-runs 0/1" in text
