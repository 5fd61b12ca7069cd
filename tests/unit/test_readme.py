"""The README keeps exactly two set-up commands at its top, and CI runs the second one verbatim."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:2]


def test_ci_runs_the_readme_test_command() -> None:
    install, tests = readme_commands()
    assert "toolkit evolve --config configs/quickstart.yaml" in install
    assert "pytest" in tests and "dev-cluster.sh start" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_quickstart_config_and_replay_exist() -> None:
    config = (ROOT / "configs" / "quickstart.yaml").read_text()
    assert "replay_file: configs/replay/quickstart.jsonl" in config
    assert (ROOT / "configs" / "replay" / "quickstart.jsonl").stat().st_size > 0


def test_quickstart_replay_is_current_and_every_diff_applies(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from toolkit.execute.patching import apply_patch

    replay = ROOT / "configs" / "replay" / "quickstart.jsonl"
    before = replay.read_text()
    subprocess.run([sys.executable, str(ROOT / "configs" / "replay" / "make_quickstart.py")], check=True,
                   capture_output=True)
    assert replay.read_text() == before, "quickstart.jsonl is stale: run configs/replay/make_quickstart.py"
    entries = [json.loads(line) for line in before.splitlines()]
    diffs = [e for e in entries if e["match"].startswith("# The idea to implement")]
    assert len(diffs) >= 8
    for n, entry in enumerate(diffs):
        outcome = apply_patch(entry["text"], ROOT / "envs" / "tiny_lm" / "code", tmp_path / f"c{n}",
                              ["eval.py", "data.py"])
        assert outcome.status == "applied", (entry["match"], outcome.reason)


def test_red_team_table_lists_every_attack_with_its_outcome() -> None:
    from redteam import ATTACKS

    text = (ROOT / "README.md").read_text()
    for attack in ATTACKS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{attack.key}`")), "")
        assert row and f"`{attack.outcome}`" in row, attack.key


def module_map() -> dict[str, str]:
    """README's module map: the modules cell of each row -> the row's text."""
    section = (ROOT / "README.md").read_text().split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[2]: "|".join(cells) for cells in rows[1:]}


def test_the_module_map_matches_the_tree() -> None:
    """Every module of the package has its line in the map, in its package's row, and every name there exists."""
    rows = module_map()
    text = "\n".join(rows.values())
    package = ROOT / "toolkit"
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name == "__init__.py" or "_shipped" in relative.parts:
            continue
        if len(relative.parts) == 1:
            assert f"`{path.name}`" in text, f"toolkit/{relative} is missing from the README's module map"
            continue
        row = next((r for cell, r in rows.items() if cell.strip() == f"`{relative.parts[0]}/`"), "")
        assert f"`{path.stem}`" in row or f"`{relative.as_posix()}`" in text, \
            f"toolkit/{relative} is missing from its package's row of the README's module map"
    for name in re.findall(r"`([\w/]+\.py)`", "\n".join(rows)):
        assert (package / name).is_file(), f"the README's module map names toolkit/{name}, which does not exist"
    for cell, row in rows.items():
        pkg = re.fullmatch(r"\s*`(\w+)/`\s*", cell)
        for name in re.findall(r"`([a-z_]+)`", row.split("|")[3]) if pkg else ():
            assert (package / pkg.group(1) / f"{name}.py").is_file(), \
                f"the README's module map names {pkg.group(1)}/{name}, which does not exist"
