from __future__ import annotations

import os
import shutil

import pytest

SLURM_UP = shutil.which("sbatch") is not None


def pytest_collection_modifyitems(config, items):
    """Cluster tests are submitted first (their jobs overlap with the fast tests' work)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slurm") else 1)
    if SLURM_UP:
        return
    skip = pytest.mark.skip(reason="no sbatch on PATH: run `bash slurm/dev-cluster.sh start` first")
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch):
    """Tests never use a real API key; a planted one lets tests check it never reaches a job."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-planted-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-secret")
    os.environ.pop("ANTHROPIC_BASE_URL", None)
    os.environ.pop("OPENAI_BASE_URL", None)
