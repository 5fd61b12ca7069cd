"""The worker on real processes: statuses, locked-file checks, metric integrity, leftovers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import copy_env
from toolkit.cluster.worker import WorkerTask, parse_metrics, run_task
from toolkit.layout import CandidatePaths


def make_candidate(tmp_path: Path, edit=None) -> tuple[WorkerTask, CandidatePaths]:
    env = copy_env(tmp_path / "env")
    cand = CandidatePaths(tmp_path / "cand")
    shutil.copytree(env / "code", cand.code)
    if edit:
        edit(cand.code)
    return WorkerTask(cand_dir=str(cand.root), env_dir=str(env)), cand


def append(rel: str, text: str):
    return lambda code: (code / rel).write_text((code / rel).read_text() + text)


def test_baseline_ok_with_provenance(tmp_path: Path) -> None:
    task, cand = make_candidate(tmp_path)
    result = run_task(task)
    assert result["status"] == "ok", result
    assert result["metric"] == pytest.approx(0.1258, abs=1e-3)
    assert result["reward"] == pytest.approx(1 / result["metric"])
    assert json.loads(cand.result.read_text()) == result
    assert result["code_sha256"] and result["node"] and result["wall_s"] > 0


def test_crash_is_failed_with_log_tail(tmp_path: Path) -> None:
    task, _ = make_candidate(tmp_path, append("train.py", "\nraise SystemExit('kaput-7')\n"))
    result = run_task(task)
    assert result["status"] == "failed" and "kaput-7" in result["log_tail"]


def test_fake_metrics_line_from_training_is_ignored(tmp_path: Path) -> None:
    task, _ = make_candidate(tmp_path, append("train.py", '\nprint(\'{"val_mse": 0.0001}\')\n'))
    result = run_task(task)
    assert result["status"] == "ok" and result["metric"] > 0.1


@pytest.mark.parametrize("file, code", [("train.py", "\nopen('data.py', 'a').write('# hacked')\n"),
                                        ("data.py", "\n# sneaky\n")],
                         ids=["written-at-run-time", "changed-before-the-run"])
def test_a_changed_locked_file_is_invalid(tmp_path: Path, file: str, code: str) -> None:
    task, _ = make_candidate(tmp_path, append(file, code))
    result = run_task(task)
    assert result["status"] == "invalid" and "data.py" in result["reason"]


def test_hidden_eval_is_absent_and_a_planted_one_does_not_score(tmp_path: Path) -> None:
    """The candidate's directory holds no hidden file; an eval.py the run writes there is never the scorer."""
    forge = "\nimport os; assert not os.path.exists('eval.py'); open('eval.py', 'w').write('print(1)')\n"
    task, _ = make_candidate(tmp_path, append("train.py", forge))
    result = run_task(task)
    assert result["status"] == "ok" and result["metric"] > 0.001, result["reason"]
    assert result["sandbox"].startswith("landlock")


def test_background_process_left_behind_is_invalid(tmp_path: Path) -> None:
    code = "\nimport subprocess\nsubprocess.Popen(['setsid', 'sleep', '300'])\n"
    task, _ = make_candidate(tmp_path, append("train.py", code))
    result = run_task(task)
    assert result["status"] == "invalid" and "background" in result["reason"]


def test_implausible_metric_is_invalid(tmp_path: Path) -> None:
    task, _ = make_candidate(tmp_path, append(
        "train.py", "\nimport json; json.dump({'w': 3.0, 'b': 1.0}, open('model.json', 'w'))\n"))
    result = run_task(task)
    # w=3, b=1 is the exact generator: the val mse is the noise (0.01), inside the toy's plausible range
    assert result["status"] == "ok"
    task2, _ = make_candidate(tmp_path / "b", append(
        "train.py", "\nimport json; json.dump({'w': 300.0, 'b': 1.0}, open('model.json', 'w'))\n"))
    result2 = run_task(task2)
    assert result2["status"] == "invalid" and "implausible" in result2["reason"]


def test_parse_metrics() -> None:
    assert parse_metrics('noise\n{"a": 1}\n\n') == {"a": 1}
    assert parse_metrics('{"a": 1}\ntrailing text') is None
    assert parse_metrics("[1, 2]") is None
    assert parse_metrics("") is None


def test_run_over_the_budget_is_invalid(tmp_path: Path) -> None:
    """A fixed-time budget is a rule: an edited train.py that trains longer gets no score."""
    task, _ = make_candidate(tmp_path, append("train.py", "\nimport time; time.sleep(1.5)\n"))
    yaml_path = Path(task.env_dir) / "env.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("resources: {", "resources: {run_budget_s: 1.0, "))
    result = run_task(task)
    assert result["status"] == "invalid" and "run_budget_s of 1 s" in result["reason"], result
    assert result["run_s"] > 1.0


def test_wait_exit_blocks_until_exit_or_timeout() -> None:
    """The run step waits on a pidfd (no polling loop), and still times out."""
    import resource
    import subprocess
    import time

    from toolkit.cluster.worker import wait_exit
    proc = subprocess.Popen(["sleep", "0.5"])
    cpu0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.monotonic()   # this thread: others may run
    wait_exit(proc, 10.0)
    cpu1 = resource.getrusage(resource.RUSAGE_THREAD)
    assert proc.returncode == 0 and time.monotonic() - t0 >= 0.45
    assert (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime) < 0.05   # slept, did not spin
    slow = subprocess.Popen(["sleep", "5"])
    with pytest.raises(subprocess.TimeoutExpired):
        wait_exit(slow, 0.2)
    slow.kill()
    slow.wait()


def test_an_eval_over_its_budget_is_invalid(tmp_path: Path) -> None:
    """Time may not be bought in the scoring stage either (candidate code runs there in model children)."""
    task, _ = make_candidate(tmp_path)
    env_yaml = Path(task.env_dir) / "env.yaml"
    env_yaml.write_text(env_yaml.read_text().replace("eval_time_min: 0.5}", "eval_time_min: 0.5, eval_budget_s: 1}")
                        .replace("eval: python eval.py", "eval: sleep 2 && python eval.py"))
    result = run_task(task)
    assert result["status"] == "invalid" and "eval_budget_s" in result["reason"], result


def test_changed_pinned_inputs_stop_the_task_with_an_alarm(tmp_path: Path) -> None:
    from toolkit import pins
    task, _ = make_candidate(tmp_path)
    pinned = {"snapshot": pins.pin_tree(Path(task.env_dir)), "data": {}, "hidden": {}}
    (Path(task.env_dir) / "code" / "data.py").write_text("# swapped after the run started\n")
    from dataclasses import replace
    result = run_task(replace(task, pins=pinned))
    assert result["status"] == "invalid" and "snapshot/code/data.py" in result["alarm"], result
    unchanged = {"snapshot": pins.pin_tree(Path(task.env_dir)), "data": {}, "hidden": {}}
    assert run_task(replace(task, pins=unchanged))["alarm"] == ""
