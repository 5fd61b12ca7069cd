"""The one ideation prompt per environment: the baseline code + "propose an improvement" (templates/rl_prompt.j2).

The locked evaluation file is replaced by a note, as in the implementer's prompt. With the "previous results"
mitigation on, the previous step's ideas and their outcomes are listed, best first.
"""
from __future__ import annotations

from typing import Any

from toolkit.envs import EnvSpec, is_locked, list_files
from toolkit.prompts import render

PROMPT_SUFFIXES = (".py", ".sh")


def codebase_files(spec: EnvSpec) -> list[dict[str, Any]]:
    files = [f for f in list_files(spec.code_dir) if f.endswith(PROMPT_SUFFIXES)]
    return [{"path": f, "hidden": is_locked(f, spec.hidden),
             "text": "" if is_locked(f, spec.hidden) else (spec.code_dir / f).read_text().rstrip("\n")}
            for f in files]


def outcome_label(entry: dict[str, Any]) -> str:
    return f"reward {entry['reward']:.4g}" if entry["status"] == "ok" else f"{entry['status'] or 'not run'}"


def previous_results(archive: list[dict[str, Any]], step: int, limit: int) -> list[dict[str, str]]:
    """Up to `limit` ideas of step `step`, best reward first, failures last."""
    rows = [e for e in archive if e["step"] == step]
    rows.sort(key=lambda e: (e["status"] != "ok", -(e["reward"] or 0.0)))
    return [{"idea": " ".join(e["idea"].split()), "outcome": outcome_label(e)} for e in rows[:limit]]


def ideation_prompt(spec: EnvSpec, previous: list[dict[str, str]]) -> str:
    return render("rl_prompt", description=spec.description.strip(), files=codebase_files(spec),
                  metric=spec.metric, direction=spec.direction, previous=previous)
