"""The environment of a job is built from an allow-list: no API key or token ever reaches a job."""
from __future__ import annotations

import fnmatch
import os
import re
import sys
from pathlib import Path
from typing import Mapping

ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "SHELL", "TERM",
         "CUDA_*", "NVIDIA_*", "SLURM_*", "SUBMITIT_*", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NCCL_*",
         "TORCH_*", "TRITON_*", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
         "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "PYTHONPATH", "MASTER_ADDR",
         "MASTER_PORT", "TOOLKIT_*")
# Denied even when allowed above: a secret never travels, whatever its name's prefix.
DENY = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*_AUTH*")


# Set inside the batch script (by submitit) before `srun`: srun re-applies the --export list, so these
# names must be on it too, or the task cannot tell it runs under submitit.
BATCH_SET = ("SUBMITIT_EXECUTOR",)


def _one_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """Shell patterns as one compiled regex: one match per name instead of one per pattern."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


_DENY_RE, _ALLOW_RE = _one_regex(DENY), _one_regex(ALLOW)


def allowed(name: str, extra_allow: tuple[str, ...] = ()) -> bool:
    if _DENY_RE.match(name.upper()):
        return False
    return bool(_ALLOW_RE.match(name)) or any(fnmatch.fnmatchcase(name, p) for p in extra_allow)


def job_environ(source: Mapping[str, str] | None = None, extra_allow: tuple[str, ...] = ()) -> dict[str, str]:
    """The allow-listed subset of `source` (default os.environ), with this interpreter first on PATH."""
    source = os.environ if source is None else source
    env = {k: v for k, v in source.items() if allowed(k, extra_allow)}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    return env


def export_names(source: Mapping[str, str] | None = None, extra_allow: tuple[str, ...] = ()) -> str:
    """The value for `sbatch --export=`: only allow-listed names (SLURM adds its own SLURM_* variables)."""
    names = sorted(set(job_environ(source, extra_allow)) | set(BATCH_SET))
    return ",".join(names)
