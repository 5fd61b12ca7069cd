"""toolkit.cluster.confine: what a confined process can and cannot do, leftovers by ancestry, and the mechanisms.

Everything here runs as root (CI too), so a test that relied on Unix permissions would prove nothing:
Landlock and namespaces hold for root. Each defence is tested next to a benign control.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolkit.cluster import confine

PROBE = textwrap.dedent("""
    import json, os, socket, sys
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "allowed"
        except Exception as exc:
            out[name] = type(exc).__name__
    attempt("write_code", lambda: open("mine.txt", "w").write("x"))
    attempt("write_scratch", lambda: open(os.environ["SCRATCH"] + "/s.txt", "w").write("x"))
    attempt("read_data", lambda: open(os.environ["DATA"] + "/train.txt").read())
    attempt("read_secret", lambda: open(os.environ["SECRET"]).read())
    attempt("write_outside", lambda: open(os.environ["OUTSIDE"] + "/forged.json", "w").write("{}"))
    attempt("read_toolkit", lambda: open(os.environ["TOOLKIT_FILE"]).read())
    attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=2).close())
    attempt("environ_of_parent_tree", lambda: open(f"/proc/{os.environ['TRUSTED_PID']}/environ", "rb").read())
    attempt("signal_trusted", lambda: os.kill(int(os.environ["TRUSTED_PID"]), 0))
    attempt("import_torch", lambda: __import__("torch"))
    json.dump(out, sys.stdout)
""")


@pytest.fixture
def layout(tmp_path):
    for name in ("code", "scratch", "data", "outside", "control"):
        (tmp_path / name).mkdir()
    (tmp_path / "data" / "train.txt").write_text("public")
    (tmp_path / "secret.txt").write_text("hidden")
    (tmp_path / "code" / "probe.py").write_text(PROBE)
    return tmp_path


def run_confined(layout: Path, mechanism: str, argv: list[str],
                 **extra_env: str) -> tuple[subprocess.CompletedProcess, confine.Report]:
    policy = confine.candidate_policy(layout / "code", layout / "scratch", [str(layout / "data")], mechanism,
                                      timeout_s=30)
    launch = confine.launch_argv(policy, argv, layout / "control")
    env = confine.confined_environ({"PATH": os.environ["PATH"], **extra_env}, layout / "scratch")
    proc = subprocess.run(launch.argv, cwd=layout / "code", env=env, capture_output=True, text=True, timeout=120)
    return proc, confine.read_report(launch.report)


def probe(layout: Path, mechanism: str) -> dict:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        env = dict(SCRATCH=str(layout / "scratch"), DATA=str(layout / "data"), SECRET=str(layout / "secret.txt"),
                   OUTSIDE=str(layout / "outside"), PORT=str(listener.getsockname()[1]), TRUSTED_PID=str(os.getpid()),
                   TOOLKIT_FILE=confine.__file__)
        proc, report = run_confined(layout, mechanism, [sys.executable, "probe.py"], **env)
    assert proc.returncode == 0 and report.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_landlock_confines_reads_writes_network_and_signals(layout):
    seen = probe(layout, "landlock")
    # benign controls: what a training run needs
    assert seen["write_code"] == seen["write_scratch"] == seen["read_data"] == seen["import_torch"] == "allowed"
    # defences
    assert seen["read_secret"] == seen["write_outside"] == seen["read_toolkit"] == "PermissionError", seen
    assert seen["tcp"] == "PermissionError" and seen["signal_trusted"] == "PermissionError", seen
    assert seen["environ_of_parent_tree"] == "PermissionError", seen      # the daemon's API keys
    assert not (layout / "outside" / "forged.json").exists()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (.ci/run installs it)")
def test_bwrap_confines_the_same_way(layout):
    seen = probe(layout, "bwrap")
    assert seen["write_code"] == seen["write_scratch"] == seen["read_data"] == seen["import_torch"] == "allowed"
    # outside the new root, a path simply is not there
    assert seen["read_secret"] == "FileNotFoundError" and seen["read_toolkit"] == "FileNotFoundError", seen
    assert seen["write_outside"] == "FileNotFoundError" and seen["tcp"] != "allowed", seen
    assert seen["environ_of_parent_tree"] != "allowed" and not (layout / "outside" / "forged.json").exists()


def test_apptainer_command_line_is_contained_and_masks_what_landlock_denies(layout):
    policy = confine.candidate_policy(layout / "code", layout / "scratch", [str(layout / "data")], "apptainer")
    argv = confine.apptainer_argv(policy, str(layout / "code"), image="/images/train.sif")
    assert argv[:7] == ["apptainer", "exec", "--containall", "--no-home", "--cleanenv", "--pwd", str(layout / "code")]
    assert "--network" in argv and argv[argv.index("--network") + 1] == "none"
    assert f"{layout / 'data'}:{layout / 'data'}:ro" in argv and f"{layout / 'code'}:{layout / 'code'}:rw" in argv
    assert any(a.endswith(":/etc/munge:ro") for a in argv if "munge" in a) or not os.path.exists("/etc/munge")
    assert argv[-2:] == ["--nv", "/images/train.sif"]


def test_leftovers_are_found_by_ancestry_whatever_their_session_or_environment(layout):
    nap = f"sleep {300 + os.getpid() % 1000}.{os.getpid()}"   # this test's own leftover, by its command line
    escape = ["sh", "-c", f"setsid env -i sh -c '({nap} &) ; exit 0' ; exit 0"]
    proc, report = run_confined(layout, "landlock", escape)
    assert report.returncode == 0 and report.leftovers >= 1, (report, proc.stderr)
    alive = subprocess.run(["pgrep", "-f", nap], capture_output=True, text=True).stdout.split()
    assert not alive, "the leftover was killed"
    clean, clean_report = run_confined(layout, "landlock", ["sh", "-c", "sleep 0.1"])
    assert clean_report.returncode == 0 and clean_report.leftovers == 0


def test_time_limit_kills_the_whole_tree(layout):
    policy = confine.candidate_policy(layout / "code", layout / "scratch", [], "landlock", timeout_s=1)
    launch = confine.launch_argv(policy, ["sh", "-c", "sleep 100 & sleep 100"], layout / "control")
    subprocess.run(launch.argv, cwd=layout / "code", timeout=30)
    report = confine.read_report(launch.report)
    assert report.returncode is None and report.wall_s < 10 and report.leftovers >= 1


def test_mechanism_choice_is_explicit_and_recorded(monkeypatch):
    assert confine.resolve("auto") == "landlock" and confine.resolve("none") == "none"
    assert confine.describe("landlock").startswith("landlock-abi")
    with pytest.raises(confine.ConfineError, match="not one of"):
        confine.resolve("chroot")
    monkeypatch.setattr(confine, "available", lambda m: m == "none")
    with pytest.raises(confine.ConfineError, match="sandbox: none"):
        confine.resolve("auto")      # `none` is never picked silently


def test_read_set_excludes_the_toolkit_and_secrets_but_keeps_what_python_needs():
    paths = confine.python_read_paths() + confine.system_read_paths()
    package = str(Path(confine.__file__).resolve().parent)
    assert not any(p.rstrip("/") == package or package.startswith(p) and not p.endswith("/") for p in paths)
    assert not any(p.startswith("/etc/munge") or p.startswith("/dev/shm") for p in paths)
    assert any(sys.base_prefix.startswith(p.rstrip("/")) for p in paths)
    tree = confine.tree_except("/etc", ["/etc/ssh"])
    assert "/etc/" in tree and "/etc/ssh" not in tree and "/etc/hostname" in tree


def test_network_envs_get_tcp_and_shared_memory_others_neither(layout):
    """Multi-process training (torchrun, NCCL, DataLoader workers) declares `network: true`."""
    shm = f"/dev/shm/toolkit-test-{os.getpid()}"
    code = f"open({shm!r}, 'w').write('x')"
    for network, expected in ((False, 1), (True, 0)):
        policy = confine.candidate_policy(layout / "code", layout / "scratch", [], "landlock", network=network)
        launch = confine.launch_argv(policy, [sys.executable, "-c", code], layout / "control")
        subprocess.run(launch.argv, cwd=layout / "code", capture_output=True, timeout=60)
        assert (confine.read_report(launch.report).returncode != 0) == bool(expected), network
    os.unlink(shm)


def test_a_relative_control_dir_works_from_the_candidates_directory(layout, monkeypatch):
    """`runs/quickstart` is relative; the launcher itself runs in the candidate's code dir."""
    monkeypatch.chdir(layout)
    policy = confine.candidate_policy(layout / "code", layout / "scratch", [], "landlock")
    launch = confine.launch_argv(policy, ["true"], Path("control") / "run")
    subprocess.run(launch.argv, cwd=layout / "code", timeout=60)
    assert confine.read_report(launch.report).returncode == 0
