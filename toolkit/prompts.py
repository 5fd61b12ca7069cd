"""Prompts live once, in templates/, and are rendered strictly: a missing variable raises."""
from __future__ import annotations

from functools import lru_cache

import jinja2

from toolkit.shipped import shipped

TEMPLATES = shipped("templates")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render(name: str, **variables: object) -> str:
    """Render templates/<name>.j2; unknown or missing variables are errors, not empty strings."""
    return _environment().get_template(f"{name}.j2").render(**variables)


def number_lines(text: str) -> str:
    return "\n".join(f"{i:4d} | {line}" for i, line in enumerate(text.splitlines(), start=1))
