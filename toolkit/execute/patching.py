"""Unified-diff handling for LLM-written patches: extract, normalise, check, apply into a copy.

    apply_patch(reply, src, dest, locked)
      = extract_diff (fences, prose)  -> normalize_diff (headers, hunk counts, blank lines, CRLF)
      -> check_paths (locked files, absolute, '..', symlinks out, binary, symlink modes)
      -> copy src into a temporary sibling of dest -> GNU patch -> rename to dest.

Why GNU `patch` and not `git apply`: LLM diffs are approximately right. `patch` finds a hunk anywhere in the
file when its line numbers are off, and with its default fuzz factor (2) still applies a hunk whose first or
last context lines are slightly wrong; `git apply` needs exact context unless told -C, and refuses the whole
patch for either. The paper used `patch` too, so our execution rates are comparable. `patch` applies
partially on failure, which is why we apply into a copy and drop it on any failure.

Known ambiguities, resolved on purpose:
- A hunk line "--- x" directly followed by "+++ y" is read as a new file header (never a removed "-- x").
- Paths whose pair both start with a/ or b/ lose that prefix, so a top-level folder literally named "a" or
  "b" needs the prefixes (a/a/x) to survive.
- An unprefixed line inside a hunk that is followed by more changes is read as context whose leading space
  the LLM dropped; if it was prose, `patch` fails loudly rather than silently applying half of the diff.
- Trailing blank or unprefixed lines at the end of a hunk are dropped (prose, or spacing between files).
- Leading and trailing context are cut to the same length (see _balance_context): GNU patch would otherwise
  pin a lopsided hunk to the start or end of the file. Hunks without line numbers keep all their context.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

DEV_NULL = "/dev/null"
FUZZ_LINES = 2  # GNU patch's default, made explicit: context lines a hunk may miss at each end
PATCH_TIMEOUT_S = 60
REASON_MAX_CHARS = 2000
NO_DIFF = "no diff found"
NO_HEADERS = "diff has no ---/+++ file headers"
_REGULAR_MODES = {"100644", "100755"}

_FENCE_RE = re.compile(r"^(`{3,}|~{3,})\s*([\w+.-]*)\s*$")
_HUNK_NUMS_RE = re.compile(r"-(\d+)(?:,\d+)?\s+\+(\d+)(?:,\d+)?")
_BINARY_RE = re.compile(r"^Binary files (.+) and (.+) differ$")
_MODE_RE = re.compile(r"^(?:old mode|new mode|deleted file mode|new file mode) (\d+)")
_TIMESTAMP_RE = re.compile(
    r"\s+(\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?(\s*[+-]\d{4})?"  # ISO, as diff -u writes
    r"|\w{3} \w{3}\s+\d+ \d\d:\d\d:\d\d \d{4})$"  # ctime, as old diffs write
)
_EXTENDED_PREFIXES = (
    "old mode ", "new mode ", "deleted file mode ", "new file mode ", "similarity index ",
    "dissimilarity index ", "rename from ", "rename to ", "copy from ", "copy to ", "GIT binary patch",
)
_RENAME_PREFIXES = ("rename from ", "rename to ", "copy from ", "copy to ")
_PATCH_ENV_DROPPED = ("POSIXLY_CORRECT", "PATCH_GET", "SIMPLE_BACKUP_SUFFIX", "VERSION_CONTROL", "QUOTING_STYLE")


@dataclass(frozen=True)
class PatchOutcome:
    status: str  # "applied" | "failed" | "refused"
    reason: str  # "" when applied; else why (for failed: the tool's error text, trimmed)
    files: tuple[str, ...]  # relative paths the diff touches (after normalisation)
    diff: str  # the normalised diff text that was (or would have been) applied


@dataclass(frozen=True)
class _Hunk:
    old_start: int | None  # None when the LLM wrote a header without line numbers
    new_start: int | None
    tail: str  # text after the closing @@ (the function name diff -p shows)
    body: tuple[str, ...]  # repaired body lines, each starting with ' ', '-', '+' or '\'


@dataclass(frozen=True)
class _FileDiff:
    old: str  # normalised relative path, or /dev/null
    new: str
    git: bool  # came with a "diff --git" line
    extended: tuple[str, ...]  # git extended header lines kept verbatim (modes, renames, binary markers)
    hunks: tuple[_Hunk, ...]


# ---------------------------------------------------------------- extraction


def extract_diff(text: str) -> str:
    """The diff inside an LLM reply: fenced blocks that hold diff parts are joined; "" if none."""
    lines = _split_lines(text)
    blocks = [block for block in _fenced_blocks(lines) if _looks_like_diff(block)]
    candidate = [line for block in blocks for line in block] if blocks else lines
    start = _first_diff_line(candidate)
    return "" if start is None else "\n".join(candidate[start:]).rstrip("\n") + "\n"


def _split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").split("\n")


def _fenced_blocks(lines: list[str]) -> list[list[str]]:
    """Contents of ``` / ~~~ fenced blocks; an unterminated fence (truncated reply) runs to the end."""
    blocks: list[list[str]] = []
    fence: str | None = None
    for line in lines:
        match = _FENCE_RE.match(line)
        if fence is None and match:
            fence = match.group(1)
            blocks.append([])
        elif fence is not None and match and match.group(1)[0] == fence[0] and not match.group(2):
            fence = None
        elif fence is not None:
            blocks[-1].append(line)
    return blocks


def _looks_like_diff(lines: list[str]) -> bool:
    return _first_diff_line(lines) is not None


def _first_diff_line(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        if line.startswith(("diff --git ", "@@")) or _is_file_header(lines, i) or _BINARY_RE.match(line):
            return i
    return None


def _is_file_header(lines: list[str], i: int) -> bool:
    return lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")


# ---------------------------------------------------------------- parsing


def _parse(diff: str) -> list[_FileDiff]:
    """File sections of a diff; prose between sections and hunks without file headers are dropped."""
    lines = _split_lines(diff)
    files: list[_FileDiff] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("diff --git ") or _is_file_header(lines, i):
            section, i = _parse_section(lines, i)
            files.append(section)
        elif _BINARY_RE.match(lines[i]):
            files.append(_binary_section(lines[i]))
            i += 1
        else:
            i += 1
    return files


def _parse_section(lines: list[str], i: int) -> tuple[_FileDiff, int]:
    git_names: tuple[str, str] | None = None
    extended: list[str] = []
    if lines[i].startswith("diff --git "):
        git_names = _git_names(lines[i])
        i += 1
        while i < len(lines) and not _starts_block(lines, i):
            if lines[i].startswith(_EXTENDED_PREFIXES) or _BINARY_RE.match(lines[i]):
                extended.append(lines[i].strip())
            i += 1
    headers: tuple[str, str] | None = None
    if i < len(lines) and _is_file_header(lines, i):
        headers = (_header_path(lines[i]), _header_path(lines[i + 1]))
        i += 2
        while i < len(lines) and not _starts_block(lines, i):  # prose between +++ and the first @@
            i += 1
    hunks: list[_Hunk] = []
    while i < len(lines) and lines[i].startswith("@@"):
        hunk, i = _parse_hunk(lines, i)
        hunks += [hunk] if hunk.body else []
    old, new = _section_paths(headers or git_names or ("", ""), headers is None, extended)
    return _FileDiff(old, new, git_names is not None, tuple(extended), tuple(hunks)), i


def _binary_section(line: str) -> _FileDiff:
    match = _BINARY_RE.match(line)
    assert match is not None
    old, new = _strip_prefixes(_clean_path(match.group(1)), _clean_path(match.group(2)))
    return _FileDiff(old, new, False, (line.strip(),), ())


def _section_paths(names: tuple[str, str], git_only: bool, extended: list[str]) -> tuple[str, str]:
    """Old/new paths; a git section without ---/+++ (empty new file, pure deletion) says so in its modes."""
    old, new = _strip_prefixes(*names)
    if git_only and any(line.startswith("new file mode ") for line in extended):
        old = DEV_NULL
    if git_only and any(line.startswith("deleted file mode ") for line in extended):
        new = DEV_NULL
    return old, new


def _starts_block(lines: list[str], i: int) -> bool:
    """A line that ends a hunk body or a git extended header: a new hunk, file section or binary marker."""
    line = lines[i]
    return line.startswith(("@@", "diff ", "Index: ")) or _is_file_header(lines, i) or bool(_BINARY_RE.match(line))


def _parse_hunk(lines: list[str], i: int) -> tuple[_Hunk, int]:
    old_start, new_start, tail = _hunk_header(lines[i])
    end = i + 1
    while end < len(lines) and not _starts_block(lines, end):
        end += 1
    region = lines[i + 1:end]
    while region and _is_trailer(region[-1]):
        region.pop()
    return _Hunk(old_start, new_start, tail, tuple(_repair_body_line(line) for line in region)), end


def _hunk_header(line: str) -> tuple[int | None, int | None, str]:
    """Start lines and trailing text of "@@ -a,b +c,d @@ tail"; numbers may be missing ("@@ ... @@")."""
    inner, sep, tail = line[2:].partition("@@")
    if not sep:
        inner, tail = line[2:], ""
    match = _HUNK_NUMS_RE.search(inner)
    if match is None:
        return None, None, tail.rstrip()
    return int(match.group(1)), int(match.group(2)), tail.rstrip()


def _is_trailer(line: str) -> bool:
    return line == "" or not line.startswith((" ", "+", "-", "\\"))


def _repair_body_line(line: str) -> str:
    """LLMs drop the single space that prefixes a context line: an empty line is a blank context line."""
    return line if line.startswith((" ", "+", "-", "\\")) else " " + line


# ---------------------------------------------------------------- paths


def _git_names(line: str) -> tuple[str, str]:
    rest = line[len("diff --git "):].strip()
    match = re.match(r'^"?(a/.+?)"? "?(b/.+?)"?$', rest)
    if match:
        return _clean_path(match.group(1)), _clean_path(match.group(2))
    parts = rest.split()
    return _clean_path(parts[0]), _clean_path(parts[-1] if len(parts) > 1 else parts[0])


def _header_path(line: str) -> str:
    """The path of a ---/+++ line without its timestamp ("--- a/x.py\\t2024-01-01 ...")."""
    path = line[4:].split("\t")[0]
    return _clean_path(_TIMESTAMP_RE.sub("", path))


def _clean_path(path: str) -> str:
    path = path.strip().strip('"').strip()
    if path == DEV_NULL:
        return path
    while path.startswith("./"):
        path = path[2:]
    return path


def _strip_prefixes(old: str, new: str) -> tuple[str, str]:
    """Drop git's a/ b/ prefixes: always the conventional one, and either one when both sides carry one."""
    sides = [p for p in (old, new) if p != DEV_NULL]
    both = bool(sides) and all(p.startswith(("a/", "b/")) for p in sides)
    return _strip_one(old, "a/", both), _strip_one(new, "b/", both)


def _strip_one(path: str, conventional: str, both: bool) -> str:
    if path == DEV_NULL or not (path.startswith(conventional) or (both and path.startswith(("a/", "b/")))):
        return path
    return _clean_path(path[2:])


def _posix(path: str) -> str:
    return str(PurePosixPath(path)) if path else ""


# ---------------------------------------------------------------- normalisation


def normalize_diff(diff: str) -> str:
    """Canonical a/ b/ headers, recounted hunk headers, repaired blank context lines, LF line endings."""
    lines = [line for section in _parse(diff) for line in _render_section(section)]
    return "\n".join(lines) + "\n" if lines else ""


def _render_section(section: _FileDiff) -> list[str]:
    lines: list[str] = []
    if section.git:
        old = section.old if section.old != DEV_NULL else section.new
        new = section.new if section.new != DEV_NULL else section.old
        lines.append(f"diff --git a/{_posix(old)} b/{_posix(new)}")
    lines.extend(section.extended)
    if section.hunks or not (section.git or section.extended):
        lines += [f"--- {_side(section.old, 'a/')}", f"+++ {_side(section.new, 'b/')}"]
    for hunk in section.hunks:
        lines += _render_hunk(hunk, section.old == DEV_NULL, section.new == DEV_NULL)
    return lines


def _side(path: str, prefix: str) -> str:
    return path if path == DEV_NULL else prefix + _posix(path)


def _balance_context(hunk: _Hunk) -> _Hunk:
    """Cut the longer run of context so both ends have as many lines as the shorter one.

    GNU patch pins a hunk whose leading and trailing context differ (beyond the fuzz factor) to the start or
    end of the file, which is right for diff's own output and wrong for an LLM's. Start lines move with the
    cut, and a side left with no lines follows the unified convention (start = the line before)."""
    body = hunk.body
    if hunk.old_start is None or any(line[0] == "\\" for line in body) or all(line[0] == " " for line in body):
        return hunk  # a hunk without line numbers needs all its context to be found
    lead, trail = _leading_context(body), _leading_context(body[::-1])
    keep = min(lead, trail)
    cut_lead, cut_trail = lead - keep, trail - keep
    if not cut_lead and not cut_trail:
        return hunk
    trimmed = body[cut_lead:len(body) - cut_trail]
    old_start = _shift_start(hunk.old_start, cut_lead, _old_len(trimmed))
    new_start = _shift_start(hunk.new_start, cut_lead, _new_len(trimmed))
    return replace(hunk, old_start=old_start, new_start=new_start, body=trimmed)


def _leading_context(body: tuple[str, ...]) -> int:
    count = 0
    while count < len(body) and body[count][0] == " ":
        count += 1
    return count


def _shift_start(start: int | None, cut_lead: int, length: int) -> int | None:
    if start is None:
        return None
    return start + cut_lead - (1 if length == 0 else 0)


def _old_len(body: tuple[str, ...]) -> int:
    return sum(1 for line in body if line[0] in " -")


def _new_len(body: tuple[str, ...]) -> int:
    return sum(1 for line in body if line[0] in " +")


def _render_hunk(hunk: _Hunk, old_empty: bool, new_empty: bool) -> list[str]:
    hunk = _balance_context(hunk)
    old_len, new_len = _old_len(hunk.body), _new_len(hunk.body)
    old_start = _start(hunk.old_start, old_len, old_empty)
    new_start = _start(hunk.new_start, new_len, new_empty)
    return [f"@@ -{old_start},{old_len} +{new_start},{new_len} @@{hunk.tail}", *hunk.body]


def _start(start: int | None, length: int, empty_side: bool) -> int:
    """Keep the LLM's start line; /dev/null sides start at 0; a missing start lets patch search from line 1."""
    if empty_side:
        return 0
    if start is None:
        return 0 if length == 0 else 1
    return start


# ---------------------------------------------------------------- checks


def touched_paths(diff: str) -> tuple[str, ...]:
    """Relative paths a diff creates, changes, deletes or renames, in order of first appearance."""
    paths: list[str] = []
    for section in _parse(diff):
        paths += [p for p in (section.old, section.new) if p != DEV_NULL]
        renames = [line for line in section.extended if line.startswith(_RENAME_PREFIXES)]
        paths += [_clean_path(line.split(" ", 2)[2]) for line in renames]
    return tuple(dict.fromkeys(_posix(p) for p in paths))


def check_paths(diff: str, codebase: Path, locked: Iterable[str]) -> str:
    """"" if the diff may be applied to codebase, else the reason to refuse it."""
    patterns = [_posix(_clean_path(p)) for p in locked]
    reason = _check_content(_split_lines(diff))
    for path in touched_paths(diff):
        reason = reason or _check_path(path, codebase, patterns)
    return reason


def _check_content(lines: list[str]) -> str:
    for line in lines:
        if line.startswith("GIT binary patch") or _BINARY_RE.match(line):
            return f"binary patches are refused: {line.strip()!r}"
        mode = _MODE_RE.match(line)
        if mode and mode.group(1) not in _REGULAR_MODES:
            return f"only regular files may be patched (mode {mode.group(1)}): {line.strip()!r}"
    return ""


def _check_path(path: str, codebase: Path, patterns: list[str]) -> str:
    pure = PurePosixPath(path)
    if path in ("", ".") or pure.is_absolute() or path.startswith("~") or re.match(r"^[A-Za-z]:[\\/]", path):
        return f"path {path!r} is not a relative path inside the codebase"
    if ".." in pure.parts:
        return f"path {path!r} contains '..'"
    if _is_locked(path, patterns):
        return f"path {path!r} is locked"
    return _check_resolved(path, codebase, patterns)


def _check_resolved(path: str, codebase: Path, patterns: list[str]) -> str:
    """Follow symlinks in the codebase: the real target must be inside it and not locked."""
    try:
        root = codebase.resolve()
        real = (codebase / path).resolve()
    except (OSError, RuntimeError) as error:  # symlink loops
        return f"path {path!r} cannot be resolved: {error}"
    if not real.is_relative_to(root):
        return f"path {path!r} goes through a symlink that points outside the codebase (to {real})"
    relative = real.relative_to(root).as_posix()
    if relative != path and _is_locked(relative, patterns):
        return f"path {path!r} is a symlink to the locked file {relative!r}"
    return ""


def _is_locked(path: str, patterns: list[str]) -> bool:
    """A pattern locks the paths it matches (fnmatch: '*' also crosses '/') and everything under it."""
    return any(fnmatch.fnmatchcase(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


# ---------------------------------------------------------------- application


def apply_patch(reply_or_diff: str, src: Path, dest: Path, locked: Iterable[str]) -> PatchOutcome:
    """Copy src to dest and apply the diff there; on failure or refusal dest does not exist afterwards."""
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists: apply_patch needs a fresh destination")
    raw = extract_diff(reply_or_diff)
    diff = normalize_diff(raw)
    files = touched_paths(diff)
    if not files:
        return PatchOutcome("failed", NO_HEADERS if raw else NO_DIFF, (), diff)
    reason = check_paths(diff, src, locked)
    if reason:
        return PatchOutcome("refused", reason, files, diff)
    error = _apply_into_new_dir(diff, src, dest)
    return PatchOutcome("failed" if error else "applied", error, files, diff)


def _apply_into_new_dir(diff: str, src: Path, dest: Path) -> str:
    """Patch a copy in a temporary sibling, then rename it to dest: readers never see a half-patched tree."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".patching"))
    try:
        shutil.copytree(src, work, symlinks=True, dirs_exist_ok=True)
        error = run_patch_tool(diff, work)
        if not error:
            os.replace(work, dest)
        return error
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_patch_tool(diff: str, folder: Path, timeout_s: float = PATCH_TIMEOUT_S) -> str:
    """Apply a normalised diff in folder with GNU patch; "" on success, else its trimmed output."""
    command = [
        _patch_binary(), "-p1", "--batch", "--forward", f"--fuzz={FUZZ_LINES}", "--no-backup-if-mismatch",
        "--reject-file=-", "--quoting-style=literal", "-d", str(folder),
    ]
    env = {k: v for k, v in os.environ.items() if k not in _PATCH_ENV_DROPPED}
    try:
        done = subprocess.run(command, input=diff, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return f"patch did not finish within {timeout_s:g} s"
    if done.returncode == 0:
        return ""
    return _trim(f"patch exited with status {done.returncode}\n{done.stdout}{done.stderr}")


def _patch_binary() -> str:
    found = shutil.which("patch")
    if found is None:
        raise FileNotFoundError("GNU patch is not installed: run `apt-get install patch`")
    return found


def _trim(text: str, max_chars: int = REASON_MAX_CHARS) -> str:
    text = text.strip()
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return f"{text[:half]}\n[... {len(text) - max_chars} characters cut ...]\n{text[-half:]}"
