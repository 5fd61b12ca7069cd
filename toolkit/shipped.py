"""Where the shipped data lives: templates, environments and configs.

In a checkout (and an editable install) they are the repository's top-level `templates/`, `envs/` and
`configs/`. A built wheel carries copies of them inside the package, under `toolkit/_shipped/` (setup.py copies
them at build time), so an installed toolkit finds them without the source tree.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "_shipped"
CHECKOUT = PACKAGE.parent


def shipped(name: str) -> Path:
    """`templates`, `envs` or `configs`: the installed copy when there is one, else the checkout's."""
    installed = INSTALLED / name
    return installed if installed.is_dir() else CHECKOUT / name


def config_path(name_or_path: str) -> Path:
    """A config file path, or the name of a shipped config (`quickstart` = configs/quickstart.yaml)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml") and "/" in name_or_path:
        return path
    candidate = shipped("configs") / f"{name_or_path.removesuffix('.yaml')}.yaml"
    return candidate if candidate.is_file() else path
