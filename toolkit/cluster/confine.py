"""Confinement of candidate code, enforced by the OS, and leftovers found by ancestry.

Every process that runs candidate code (the run, the quick check, the eval's model child) is started by
`python -m toolkit.cluster.confine POLICY.json -- ARGV...`, a small trusted launcher that:
1. becomes a child subreaper, so every process the candidate forks, daemonised or not, stays its descendant;
2. starts ARGV confined by the policy's mechanism (Landlock by default: unprivileged, no namespaces, works
   inside SLURM jobs and holds for root too; bubblewrap or Apptainer where a site prefers them);
3. waits for it under the policy's time limit, then kills every descendant still alive (a leftover);
4. writes a JSON report (exit code, timeout, leftovers, mechanism) to a file the candidate cannot write.

A policy names what the candidate may read and write; everything else on the filesystem is out of reach
(the run state, results, other candidates, hidden files and data, $HOME). No TCP unless `network` is set.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

MECHANISMS = ("auto", "landlock", "bwrap", "apptainer", "none")
# system trees a Python/torch process needs to read; /etc, /dev and /proc are listed child by child
# (see SYSTEM_EXCLUDE) so that secrets under them stay out
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/opt", "/sys", "/etc", "/proc", "/dev",
               "/run/nvidia-persistenced")
# children of the trees above that candidate code never needs and that can hold secrets or other processes'
# traffic: munge and SSH keys (a munge key forges SLURM credentials), shared memory (a channel between
# candidates), the kernel keyring
SYSTEM_EXCLUDE = {"/etc": ("munge", "shadow", "gshadow", "shadow-", "gshadow-", "ssh", "sudoers", "sudoers.d",
                           "slurm", "krb5.keytab", "security", "ssl/private"),
                  "/dev": ("shm", "mqueue")}
# device files every process writes (the GPU nodes are added when present)
DEV_WRITE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/random", "/dev/urandom")
REPORT_NAME = "confine.json"
KILL_LOOP_S = 5.0


class ConfineError(ToolkitError):
    """The requested confinement is not available on this machine."""


@dataclass(frozen=True)
class Policy:
    """What confined code may touch. Paths are absolute; a read path may be a file or a directory tree."""
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    network: bool = False
    mechanism: str = "landlock"       # a resolved mechanism: landlock, bwrap, apptainer or none
    timeout_s: float = 0.0            # 0: no limit (the caller enforces one)
    userns: bool = True               # with Landlock, also enter a user namespace where the kernel allows one
    # the same read set for mount-based mechanisms (bwrap, apptainer): whole trees bound read-only, with the
    # excluded paths masked (a few dozen mounts instead of one per allowed path)
    read_roots: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()


# ---- which mechanism -----------------------------------------------------------------------------------
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: unavailable). Asked from the syscall, not from securityfs."""
    if platform.system() != "Linux":
        return 0
    try:
        return max(0, _syscall(_NR["create_ruleset"], None, 0, LANDLOCK_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def available(mechanism: str) -> bool:
    if mechanism == "landlock":
        return landlock_abi() >= 1
    if mechanism in ("bwrap", "apptainer"):
        return shutil.which(mechanism) is not None
    return mechanism == "none"


def resolve(requested: str) -> str:
    """`auto` -> the first available of landlock, bwrap, apptainer; an unavailable explicit choice raises.
    `none` is never chosen by `auto`: running candidate code unconfined needs an explicit opt-out."""
    if requested not in MECHANISMS:
        raise ConfineError(f"sandbox {requested!r} is not one of {', '.join(MECHANISMS)}")
    if requested == "auto":
        for mechanism in ("landlock", "bwrap", "apptainer"):
            if available(mechanism):
                return mechanism
        raise ConfineError("no sandbox is available here (Landlock needs Linux >= 5.13; or install bubblewrap "
                           "or Apptainer); set `sandbox: none` in the config to run candidate code unconfined")
    if not available(requested):
        raise ConfineError(f"sandbox {requested!r} is not available on this machine "
                           f"(landlock ABI {landlock_abi()}, bwrap {bool(shutil.which('bwrap'))}, "
                           f"apptainer {bool(shutil.which('apptainer'))}); choose another or `auto`")
    return requested


def describe(mechanism: str, userns: bool = False) -> str:
    """What a result records as its confinement."""
    name = f"landlock-abi{landlock_abi()}" if mechanism == "landlock" else mechanism
    return name + "+userns" if userns and mechanism == "landlock" else name


# ---- what a candidate may read -------------------------------------------------------------------------
def python_read_paths() -> list[str]:
    """The interpreter's prefixes (site-packages included), minus the toolkit's own package (an install of it
    carries the shipped environments' hidden evals)."""
    prefixes = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    hidden = [p for prefix in prefixes for p in _toolkit_entries(prefix)]
    return sorted({p for prefix in prefixes for p in tree_except(prefix, hidden)})


# the package's metadata and editable-install finders, under its import name and its distribution name
DIST = "execution_grounded_toolkit"
TOOLKIT_ENTRY_PREFIXES = ("toolkit-", "toolkit.", "__editable__.toolkit", "__editable___toolkit", f"{DIST}-",
                          f"{DIST}.", f"__editable__.{DIST}", f"__editable___{DIST}")


def _toolkit_entries(prefix: str) -> list[str]:
    """The toolkit's files in every site-packages under `prefix` (package, metadata, editable finders)."""
    sites = {sysconfig.get_path(k, vars={"base": prefix, "platbase": prefix}) for k in ("purelib", "platlib")}
    found = []
    for site in sites:
        found += [os.path.join(site, c) for c in _children_names(site)
                  if c == "toolkit" or c.startswith(TOOLKIT_ENTRY_PREFIXES)]
    return found


def tree_except(root: str, excluded: list[str]) -> list[str]:
    """Paths that together cover `root` minus the `excluded` paths (Landlock can only allow, never deny).
    A directory above an excluded path is listed with a trailing "/" : it may be listed, not read beneath
    (so Python can still scan site-packages for the modules it may read)."""
    if not os.path.exists(root) or any(_inside(root, e) for e in excluded):
        return []
    if not any(_inside(e, root) for e in excluded):
        return [root]
    inner = [p for child in _children_names(root) for p in tree_except(os.path.join(root, child), excluded)]
    return [root.rstrip("/") + "/"] + inner


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def system_read_paths() -> list[str]:
    excluded = [os.path.join(top, name) for top, names in SYSTEM_EXCLUDE.items() for name in names]
    return [p for top in SYSTEM_READ for p in tree_except(top, excluded)]


def device_write_paths() -> list[str]:
    gpus = [os.path.join("/dev", d) for d in _children_names("/dev") if d.startswith(("nvidia", "dri", "kfd"))]
    return [p for p in (*DEV_WRITE, *gpus) if os.path.exists(p)]


def _children_names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def existing_paths(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Extra read-only trees that exist on this host (a login node and a compute node may mount different
    ones; Landlock refuses a rule on a missing path)."""
    return [p for p in paths if os.path.exists(p)]


def candidate_policy(code_dir: Path, scratch: Path, read: list[str], mechanism: str, network: bool = False,
                     timeout_s: float = 0.0, code_writable: bool = True) -> Policy:
    """The policy of a step that runs candidate code: its code dir (unless `code_writable` is off) and
    scratch writable, the given data readable, the system and the interpreter readable, nothing else."""
    code_dir, scratch, read = code_dir.resolve(), scratch.resolve(), [str(Path(p).resolve()) for p in read]
    system = system_read_paths() + python_read_paths() + ([] if code_writable else [str(code_dir)])
    writable = ([str(code_dir)] if code_writable else []) + [str(scratch), *device_write_paths()]
    if network and os.path.isdir("/dev/shm"):   # multi-process training: NCCL and DataLoader workers share it
        writable.append("/dev/shm")
    prefixes = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    roots = [p for p in SYSTEM_READ if os.path.exists(p)] + prefixes + [str(p) for p in read]
    roots += [] if code_writable else [str(code_dir)]
    hide = [os.path.join(top, n) for top, names in SYSTEM_EXCLUDE.items() for n in names
            if not (network and top == "/dev" and n == "shm")]
    hide += [p for prefix in prefixes for p in _toolkit_entries(prefix)]
    return Policy(read=tuple(sorted(set(system + [str(p) for p in read]))), write=tuple(writable),
                  network=network, mechanism=mechanism, timeout_s=timeout_s, read_roots=tuple(roots),
                  hide=tuple(p for p in hide if os.path.lexists(p)))


def confined_environ(base: dict[str, str], scratch: Path) -> dict[str, str]:
    """Caches and temporary files go to scratch (HOME included: $HOME itself is out of reach)."""
    home = scratch / "home"
    tmp = scratch / "tmp"
    for folder in (home, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    return {**base, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"), "TRITON_CACHE_DIR": str(scratch / "triton"),
            "MPLCONFIGDIR": str(home / ".matplotlib"), "PYTHONNOUSERSITE": "1"}


# ---- Landlock, through its three syscalls ---------------------------------------------------------------
_NR = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}   # the same on x86_64 and aarch64
LANDLOCK_CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
FS = dict(EXECUTE=1 << 0, WRITE_FILE=1 << 1, READ_FILE=1 << 2, READ_DIR=1 << 3, REMOVE_DIR=1 << 4,
          REMOVE_FILE=1 << 5, MAKE_CHAR=1 << 6, MAKE_DIR=1 << 7, MAKE_REG=1 << 8, MAKE_SOCK=1 << 9,
          MAKE_FIFO=1 << 10, MAKE_BLOCK=1 << 11, MAKE_SYM=1 << 12, REFER=1 << 13, TRUNCATE=1 << 14)
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1
FILE_ONLY = FS["EXECUTE"] | FS["WRITE_FILE"] | FS["READ_FILE"] | FS["TRUNCATE"]
READ_ACCESS = FS["EXECUTE"] | FS["READ_FILE"] | FS["READ_DIR"]
PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG = 38, 36, 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _syscall(number: int, *args: Any) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def _fs_rights(abi: int) -> int:
    rights = sum(v for k, v in FS.items() if k not in ("REFER", "TRUNCATE"))
    return rights | (FS["REFER"] if abi >= 2 else 0) | (FS["TRUNCATE"] if abi >= 3 else 0)


def landlock_restrict(policy: Policy) -> None:
    """Confine the calling process (and everything it starts) to the policy. Irreversible."""
    abi = landlock_abi()
    if abi < 1:
        raise ConfineError("Landlock is not available (Linux >= 5.13 with Landlock enabled is needed)")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 and not policy.network else 0,
                        SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0)
    ruleset = _syscall(_NR["create_ruleset"], ctypes.byref(attr), ctypes.sizeof(attr), 0)
    try:
        for path in policy.read:
            _allow(ruleset, path.rstrip("/") or "/", FS["READ_DIR"] if path.endswith("/") else READ_ACCESS)
        for path in policy.write:
            _allow(ruleset, path, handled)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        _syscall(_NR["restrict_self"], ruleset, 0)
    finally:
        os.close(ruleset)


def _allow(ruleset: int, path: str, access: int) -> None:
    """A symlink gets no rule of its own (its target is allowed or not on its own), nor does an object of an
    internal filesystem (a pipe behind /dev/stdin): the kernel refuses those with EBADFD."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # a path that does not exist needs no rule
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            return
        rule = _PathBeneath(access if stat.S_ISDIR(mode) else access & FILE_ONLY, fd)
        _syscall(_NR["add_rule"], ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0)
    except OSError as exc:
        if exc.errno != errno.EBADFD:
            raise
    finally:
        os.close(fd)


def _check(code: int) -> None:
    if code != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# ---- bubblewrap and Apptainer: the same policy as a command prefix ------------------------------------
def bwrap_argv(policy: Policy, cwd: str) -> list[str]:
    """A new root of read-only binds (whole trees, excluded paths masked by an empty tmpfs or /dev/null),
    fresh /proc, /dev and /tmp, private PID and IPC namespaces, no network unless asked for."""
    argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]   # first: later binds may lie under /tmp
    if not policy.network:
        argv.append("--unshare-net")
    for path in policy.read_roots:
        if not path.startswith(("/proc", "/dev")) and path != "/tmp":
            argv += ["--ro-bind", path, path]
    for path in policy.hide:
        argv += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    for path in policy.write:
        argv += ["--dev-bind" if path.startswith("/dev/") else "--bind", path, path]
    return argv + ["--chdir", cwd, "--"]


def apptainer_argv(policy: Policy, cwd: str, image: str = "") -> list[str]:
    argv = ["apptainer", "exec", "--containall", "--no-home", "--cleanenv", "--pwd", cwd]
    if not policy.network:
        argv += ["--net", "--network", "none"]
    for path in policy.read_roots:
        if not path.startswith(("/proc", "/dev", "/sys")) and path != "/tmp":
            argv += ["--bind", f"{path}:{path}:ro"]
    for path in policy.hide:
        argv += ["--bind", f"{'/var/empty' if os.path.isdir(path) else '/dev/null'}:{path}:ro"]
    for path in policy.write:
        if not path.startswith("/dev/"):
            argv += ["--bind", f"{path}:{path}:rw"]
    return argv + ["--nv", image or os.environ.get("TOOLKIT_APPTAINER_IMAGE", "docker://python:3.11-slim")]


def command_prefix(policy: Policy, cwd: str) -> list[str]:
    if policy.mechanism == "bwrap":
        return bwrap_argv(policy, cwd)
    if policy.mechanism == "apptainer":
        return apptainer_argv(policy, cwd)
    return []


# ---- the launcher --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    returncode: int | None               # None: killed at the time limit
    leftovers: int = 0                   # processes still alive after the command ended (all killed)
    mechanism: str = "none"
    wall_s: float = 0.0
    error: str = ""                      # the launcher could not confine or start the command


@dataclass(frozen=True)
class Launch:
    """How a trusted caller starts a confined command: the argv to run and where the report will be."""
    argv: list[str]
    report: Path
    policy_file: Path


def launch_argv(policy: Policy, argv: list[str], control_dir: Path) -> Launch:
    """The command that runs `argv` confined. `control_dir` must be out of the candidate's reach. Its paths
    are made absolute: the launcher runs in the candidate's directory."""
    control_dir = control_dir.resolve()
    control_dir.mkdir(parents=True, exist_ok=True)
    policy_file, report = control_dir / "policy.json", control_dir / REPORT_NAME
    report.unlink(missing_ok=True)
    policy_file.write_text(json.dumps(asdict(policy)))
    cmd = [sys.executable, "-I", "-m", "toolkit.cluster.confine", str(policy_file), str(report), "--", *argv]
    return Launch(argv=cmd, report=report, policy_file=policy_file)


def read_report(path: Path) -> Report:
    try:
        return Report(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        return Report(returncode=-1, error=f"the confinement launcher wrote no report ({exc!r})")


def run(policy: Policy, argv: list[str], cwd: str, env: dict[str, str]) -> Report:
    """Inside the launcher (single-threaded, so probing and preexec are safe): start, wait, reap."""
    start = time.monotonic()
    policy = replace(policy, userns=policy.userns and policy.mechanism == "landlock" and userns_available())
    prefix = command_prefix(policy, cwd)
    preexec = (lambda: _confine_child(policy)) if policy.mechanism == "landlock" else _child_basics
    keep = _kept_fds(env)
    try:
        proc = subprocess.Popen(prefix + argv, cwd=cwd, env=env, preexec_fn=preexec, start_new_session=True,
                                pass_fds=keep)
    except (OSError, subprocess.SubprocessError) as exc:
        return Report(returncode=-1, mechanism=describe(policy.mechanism, policy.userns),
                      error=f"could not start: {exc!r}")
    finally:
        for fd in keep:  # the child holds them now; the launcher keeping a copy would hide the child's exit
            os.close(fd)
    code = _wait(proc, policy.timeout_s)
    leftovers = reap_descendants()
    return Report(returncode=code, leftovers=leftovers, mechanism=describe(policy.mechanism, policy.userns),
                  wall_s=round(time.monotonic() - start, 4))


def _kept_fds(env: dict[str, str]) -> tuple[int, ...]:
    """Pipes a trusted caller hands to the confined command (TOOLKIT_CHILD_FDS=3,4)."""
    value = env.get("TOOLKIT_CHILD_FDS", "")
    return tuple(int(v) for v in value.split(",") if v.strip().isdigit())


def _child_basics() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _confine_child(policy: Policy) -> None:
    _child_basics()
    if policy.userns:
        enter_user_namespace()
    landlock_restrict(policy)


CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4


def enter_user_namespace() -> None:
    """A user namespace mapping only our own ids: the process keeps its uid but loses every capability
    over processes outside it, so even as root it cannot read a trusted process's /proc/<pid>/environ or
    memory (Landlock alone does not cover those reads on every kernel)."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER))
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


_USERNS: list[bool] = []


def userns_available() -> bool:
    """Can this process start a child in a new user namespace? (Often disabled on clusters.) Probed once."""
    if not _USERNS:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if _libc.unshare(CLONE_NEWUSER) == 0 else 1)
        _USERNS.append(os.waitpid(pid, 0)[1] == 0)
    return _USERNS[0]


def harden_trusted() -> None:
    """A trusted process (daemon, worker) is made non-dumpable: a process of the same user without
    CAP_SYS_PTRACE can then read neither its /proc/<pid>/environ (API keys) nor its memory."""
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _wait(proc: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        fd = -1
    try:
        if fd >= 0 and timeout_s > 0 and not select.select([fd], [], [], timeout_s)[0]:
            return None
        return proc.wait(timeout=timeout_s or None) if fd < 0 else proc.wait()
    except subprocess.TimeoutExpired:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def reap_descendants() -> int:
    """Kill every descendant of this process, found by ancestry; with this process as a child subreaper, a
    double-forked or setsid'd process is still one. Returns how many were alive."""
    root = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_LOOP_S
    while time.monotonic() < deadline:
        alive = _living(descendants(root))
        if not alive:
            break
        for pid in alive:
            _kill(pid)
        killed.update(alive)
        _reap_children()
    _reap_children()
    return len(killed)


def descendants(root: int) -> list[int]:
    """Living descendants (a zombie is dead already: it is reaped, not counted)."""
    parents = _parent_map()
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def _parent_map() -> dict[int, int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ppid = _ppid(name)
            if ppid is not None:
                parents[int(name)] = ppid
    return parents


def _living(pids: list[int]) -> list[int]:
    return [pid for pid in pids if _state(pid) not in ("Z", "X", "")]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return ""
    return stat_line[stat_line.rfind(b")") + 2:].split()[0].decode()


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)
            if not _living(descendants(os.getpid())):
                return


def become_subreaper() -> None:
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))


def main(argv: list[str] | None = None) -> int:
    """`python -I -m toolkit.cluster.confine POLICY.json REPORT.json -- COMMAND...`"""
    args = list(sys.argv[1:] if argv is None else argv)
    policy_file, report_file, command = args[0], args[1], args[3:]
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in json.loads(Path(policy_file).read_text()).items()}
    policy = Policy(**fields)
    become_subreaper()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGTERM, lambda *_: (reap_descendants(), os._exit(143)))
    report = run(policy, command, os.getcwd(), dict(os.environ))
    tmp = Path(report_file + ".tmp")
    tmp.write_text(json.dumps(asdict(report)))
    os.replace(tmp, report_file)
    code = report.returncode
    return 124 if code is None else (code if code >= 0 else 128 - code)


if __name__ == "__main__":
    sys.exit(main())
