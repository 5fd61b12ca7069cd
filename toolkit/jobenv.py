"""The environment of a job is built from an allow-list: no API key or token ever reaches a job."""
from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "SHELL", "TERM",
         "CUDA_*", "NVIDIA_*", "SLURM_*", "SUBMITIT_*", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NCCL_*",
         "TORCH_*", "TRITON_*", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
         "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "PYTHONPATH", "MASTER_ADDR",
         "MASTER_PORT", "TOOLKIT_*",
         # HPC sites: module systems (`module load` in run scripts, through BASH_ENV), proxies and CA bundles,
         # cache locations and allocator settings
         "MODULEPATH", "MODULESHOME", "MODULES_*", "LMOD_*", "_LMFILES_", "LOADEDMODULES", "BASH_ENV", "ENV",
         "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE",
         "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "XDG_CACHE_HOME", "PYTORCH_*", "HF_HUB_CACHE",
         "HF_DATASETS_CACHE")
# Denied even when allowed above: a secret never travels, whatever its name's prefix.
DENY = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*_AUTH*")


# sbatch's own settings from the environment (account, QoS, ...) still reach sbatch, except the two that would
# make SLURM load the user's login environment on the node (see `sbatch_environ`).
SBATCH_DROP = ("SBATCH_EXPORT", "SBATCH_GET_USER_ENV")
# Where a site's sbatch forwards Kerberos credentials (auks), it needs the ticket cache's path (not a secret).
SBATCH_PASS = ("KRB5CCNAME",)
# When the daemon itself runs in a job (slurm/launch_search.sh), that job's SLURM_* variables must not become
# the candidates' (srun refuses a task with both SLURM_MEM_PER_CPU and SLURM_MEM_PER_NODE); these two say
# which cluster to talk to and are kept.
SLURM_KEEP = ("SLURM_CONF", "SLURM_CLUSTERS")


def _one_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """Shell patterns as one compiled regex: one match per name instead of one per pattern."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


_DENY_RE, _ALLOW_RE = _one_regex(DENY), _one_regex(ALLOW)


# a value with credentials in a URL (a proxy as http://user:password@host) is a secret whatever its name
_URL_CREDENTIALS = re.compile(r"://[^/\s@]+:[^/\s@]*@")


def allowed(name: str, extra_allow: tuple[str, ...] = ()) -> bool:
    if _DENY_RE.match(name.upper()):
        return False
    return bool(_ALLOW_RE.match(name)) or any(fnmatch.fnmatchcase(name, p) for p in extra_allow)


def secret_like(pattern: str) -> bool:
    """A name (or glob) in `cluster.env_passthrough` that looks like a secret's: refused at config load."""
    return bool(_DENY_RE.match(pattern.upper()))


def job_environ(source: Mapping[str, str] | None = None, extra_allow: tuple[str, ...] = ()) -> dict[str, str]:
    """The allow-listed subset of `source` (default os.environ), with this interpreter first on PATH."""
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if allowed(k, extra_allow) and not _URL_CREDENTIALS.search(v)}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    return env


def sbatch_environ(source: Mapping[str, str] | None = None, extra_allow: tuple[str, ...] = ()) -> dict[str, str]:
    """The whole environment `sbatch` runs with; `--export=ALL` hands it to the job.

    Not `--export=<allowed names>`: with a list (or NONE) SLURM runs the user's login shell on the node to
    load their environment (`--get-user-env`), which costs about a second per task and brings back whatever
    the login scripts export, API keys included.
    """
    source = os.environ if source is None else source
    env = {k: v for k, v in job_environ(source, extra_allow).items() if not k.startswith("SLURM_") or k in SLURM_KEEP}
    env.update({k: v for k, v in source.items() if k in SBATCH_PASS or (
        k.startswith("SBATCH_") and k not in SBATCH_DROP and not _DENY_RE.match(k.upper()))})
    return env
