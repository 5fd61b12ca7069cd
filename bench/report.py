"""Turn the benchmarks' JSON reports into bench/RESULTS.md (one table per benchmark).

    python bench/report.py OUT/*.json --out bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ORDER = ("submit", "makespan", "polling", "collect", "daemon_idle", "implementer", "confine", "certify")


def load(paths: list[Path]) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in paths if p.exists()]
    return sorted(reports, key=lambda r: ORDER.index(r["name"]) if r["name"] in ORDER else len(ORDER))


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(report: dict) -> list[str]:
    if report.get("error"):
        return [f"**Did not finish:** {cell(report['error'])}", ""]
    lines = ["| what | ours | alternative | target | met? |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        met = {True: "yes", False: "**NO**", None: ""}[row["met"]]
        lines.append("| " + " | ".join(cell(row[k]) for k in ("what", "ours", "alternative", "target")) + f" | {met} |")
    lines.append("")
    lines += [f"- {cell(note)}" for note in report.get("notes", [])]
    return lines + ([""] if report.get("notes") else [])


def summary(reports: list[dict]) -> list[str]:
    lines = ["| benchmark | targets met | missed |", "|---|---|---|"]
    for r in reports:
        rows = [row for row in r.get("rows", []) if row["met"] is not None]
        missed = [row["what"] for row in rows if not row["met"]]
        status = "did not finish" if r.get("error") else f"{len(rows) - len(missed)} / {len(rows)}"
        lines.append(f"| {r['name']} | {status} | {cell('; '.join(missed))} |")
    return lines + [""]


def header(reports: list[dict]) -> list[str]:
    commit = _git(["rev-parse", "--short", "HEAD"])
    dirty = " (with uncommitted changes)" if _git(["status", "--porcelain", "--", "toolkit"]) else ""
    loads = ", ".join(f"{r['name']} {r['load_avg'][0]:.1f}" for r in reports if "load_avg" in r)
    first = reports[0] if reports else {}
    return ["# Benchmark results", "",
            f"Written by `bench/run_all.sh` on {datetime.now():%Y-%m-%d %H:%M}, toolkit at `{commit}`{dirty}, host "
            f"`{first.get('host', '?')}` ({first.get('cpus', '?')} cores; the dev SLURM cluster advertises 8 CPUs "
            "on them). Figures are wall-clock unless marked CPU; other work shares this machine, so the 1-minute "
            f"load average at the end of each benchmark is recorded: {loads or 'n/a'}.",
            "Each table: what is measured, ours, the alternative it is compared with, the target, and whether it "
            "is met. Rerun with `bash bench/run_all.sh`; one benchmark alone with `python bench/<name>.py`.", ""]


def _git(args: list[str]) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def render(reports: list[dict]) -> str:
    lines = header(reports) + ["## Summary", ""] + summary(reports)
    for r in reports:
        lines += [f"## {r['name']}: {r.get('title', '')}", ""] + table(r)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    text = render(load(args.reports))
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
