"""Tests for toolkit.execute.patching: real files in tmp_path, the real GNU patch binary."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from toolkit.execute.patching import (
    NO_DIFF,
    PatchOutcome,
    apply_patch,
    check_paths,
    extract_diff,
    normalize_diff,
    touched_paths,
)

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="GNU patch is not installed")

TRAIN = """import torch

lr = 0.0015
warmup_iters = 256


def train():
    model = build()

    for step in range(100):
        loss = model(step)
        loss.backward()
    return loss
"""
EVAL = "def evaluate(model):\n    return 3.28\n"
HELPERS = "def build():\n    return None\n"
LOCKED = ["eval.py", "data/*.bin"]

GOOD = """--- a/train.py
+++ b/train.py
@@ -1,4 +1,4 @@
 import torch
 
-lr = 0.0015
+lr = 0.003
 warmup_iters = 256
"""  # noqa: W293 (a diff's blank context line is one space)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and symlink under root with its content or link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = path.read_text()
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "base"
    (root / "utils").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "eval.py").write_text(EVAL)
    (root / "utils" / "helpers.py").write_text(HELPERS)
    (root / "data" / "val.bin").write_text("tokens")
    return root


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "cand0"


def applied(outcome: PatchOutcome) -> PatchOutcome:
    assert outcome.status == "applied", outcome.reason
    assert outcome.reason == ""
    return outcome


def test_good_diff_applies_into_copy(src: Path, dest: Path) -> None:
    before = snapshot(src)
    outcome = applied(apply_patch(GOOD, src, dest, LOCKED))
    assert outcome.files == ("train.py",)
    assert "lr = 0.003\n" in (dest / "train.py").read_text()
    assert snapshot(src) == before
    assert snapshot(dest) == {**before, "train.py": TRAIN.replace("0.0015", "0.003")}
    assert [p.name for p in dest.parent.iterdir()] == ["cand0"]  # no temporary left beside it


def test_wrong_hunk_counts_and_blank_context_lines_are_repaired(src: Path, dest: Path) -> None:
    # Counts are wrong (LLMs miscount) and the blank context lines lost their leading space.
    diff = (
        "--- a/train.py\n+++ b/train.py\n@@ -7,9 +7,2 @@\n def train():\n     model = build()\n"
        "\n     for step in range(100):\n         loss = model(step)\n+        loss = loss * 2\n"
        "         loss.backward()\n"
    )
    applied(apply_patch(diff, src, dest, LOCKED))
    assert "loss = loss * 2\n        loss.backward()" in (dest / "train.py").read_text()
    # 5 leading vs 1 trailing context line: GNU patch would pin the hunk to the end of the file.
    assert "@@ -11,2 +11,3 @@\n         loss = model(step)\n+" in normalize_diff(diff)
    assert normalize_diff(normalize_diff(diff)) == normalize_diff(diff)


def test_insertion_with_only_trailing_context_lands_before_it(src: Path, dest: Path) -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -3,3 +3,4 @@\n+import math\n lr = 0.0015\n warmup_iters = 256\n \n"
    assert "@@ -2,0 +3,1 @@\n+import math\n" in normalize_diff(diff)
    applied(apply_patch(diff, src, dest, LOCKED))
    assert (dest / "train.py").read_text().splitlines()[:4] == ["import torch", "", "import math", "lr = 0.0015"]


def test_fenced_reply_with_prose_and_two_blocks_applies(src: Path, dest: Path) -> None:
    reply = (
        "Sure! Here is the change to the learning rate:\n\n```diff\n" + GOOD + "```\n\n"
        "And a helper tweak:\n```\n--- a/utils/helpers.py\n+++ b/utils/helpers.py\n@@ -1,2 +1,2 @@\n"
        " def build():\n-    return None\n+    return 42\n```\nThis should train faster.\n"
    )
    outcome = applied(apply_patch(reply, src, dest, LOCKED))
    assert outcome.files == ("train.py", "utils/helpers.py")
    assert (dest / "utils" / "helpers.py").read_text() == "def build():\n    return 42\n"
    assert "```" not in outcome.diff and "Sure" not in outcome.diff


def test_multi_file_diff_with_git_headers_applies(src: Path, dest: Path) -> None:
    diff = (
        "diff --git a/train.py b/train.py\nindex 1234567..89abcde 100644\n" + GOOD
        + "diff --git a/utils/helpers.py b/utils/helpers.py\n--- a/utils/helpers.py\n+++ b/utils/helpers.py\n"
        "@@ -1,2 +1,3 @@\n def build():\n+    print('building')\n     return None\n"
    )
    outcome = applied(apply_patch(diff, src, dest, LOCKED))
    assert outcome.files == ("train.py", "utils/helpers.py")
    assert "print('building')" in (dest / "utils" / "helpers.py").read_text()
    assert "lr = 0.003" in (dest / "train.py").read_text()


def test_new_file_is_created(src: Path, dest: Path) -> None:
    diff = "--- /dev/null\n+++ b/utils/schedule.py\n@@ -1,0 +1,3 @@\n+def cosine(step):\n+\n+    return 1.0\n"
    outcome = applied(apply_patch(diff, src, dest, LOCKED))
    assert outcome.files == ("utils/schedule.py",)
    assert (dest / "utils" / "schedule.py").read_text() == "def cosine(step):\n\n    return 1.0\n"
    assert "@@ -0,0 +1,3 @@" in outcome.diff


def test_deleted_file_is_removed(src: Path, dest: Path) -> None:
    diff = ("diff --git a/utils/helpers.py b/utils/helpers.py\ndeleted file mode 100644\n"
            "--- a/utils/helpers.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-def build():\n-    return None\n")
    outcome = applied(apply_patch(diff, src, dest, LOCKED))
    assert outcome.files == ("utils/helpers.py",)
    assert not (dest / "utils" / "helpers.py").exists()
    assert (src / "utils" / "helpers.py").exists()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("eval.py", "locked"),
        ("data/val.bin", "locked"),  # glob data/*.bin
        ("/etc/passwd", "not a relative path"),
        ("../outside.py", "'..'"),
        ("utils/../../outside.py", "'..'"),
    ],
)
def test_forbidden_paths_are_refused(src: Path, dest: Path, path: str, expected: str) -> None:
    diff = f"--- a/{path}\n+++ b/{path}\n@@ -1,1 +1,1 @@\n-x\n+y\n"
    if path.startswith("/"):
        diff = f"--- {path}\n+++ {path}\n@@ -1,1 +1,1 @@\n-x\n+y\n"
    before = snapshot(src)
    outcome = apply_patch(diff, src, dest, LOCKED)
    assert outcome.status == "refused"
    assert expected in outcome.reason and path in outcome.reason
    assert outcome.files == (path,)
    assert not dest.exists() and snapshot(src) == before


def test_new_file_under_a_locked_folder_is_refused(src: Path) -> None:
    diff = "--- /dev/null\n+++ b/secret/x.py\n@@ -0,0 +1 @@\n+x = 1\n"
    assert "locked" in check_paths(diff, src, ["secret/"])
    assert check_paths(diff, src, ["eval.py"]) == ""


def test_symlink_pointing_outside_is_refused(src: Path, dest: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.py").write_text("x\n")
    (src / "ext").symlink_to(outside)  # a folder symlink out of the codebase
    (src / "victim_link.py").symlink_to(outside / "victim.py")  # a file symlink out of it
    for path in ("ext/victim.py", "victim_link.py", "ext/new.py"):
        diff = f"--- a/{path}\n+++ b/{path}\n@@ -1,1 +1,1 @@\n-x\n+y\n"
        outcome = apply_patch(diff, src, dest, LOCKED)
        assert outcome.status == "refused", path
        assert "symlink" in outcome.reason
    assert (outside / "victim.py").read_text() == "x\n"
    assert not dest.exists()


def test_symlinks_are_copied_as_links_and_inner_links_are_allowed(src: Path, dest: Path) -> None:
    (src / "alias.py").symlink_to("utils/helpers.py")
    (src / "eval_alias.py").symlink_to("eval.py")
    assert "locked" in check_paths("--- a/eval_alias.py\n+++ b/eval_alias.py\n@@ -1 +1 @@\n-a\n+b\n", src, LOCKED)
    applied(apply_patch(GOOD, src, dest, LOCKED))
    assert (dest / "alias.py").is_symlink() and os.readlink(dest / "alias.py") == "utils/helpers.py"


@pytest.mark.parametrize(
    "diff",
    [
        ("diff --git a/model.bin b/model.bin\nnew file mode 100644\nindex 0000000..e69de29\nGIT binary patch\n"
         "literal 12\nTcmZ?wbhEHbPnrLmdk{N\n\nliteral 0\nHcmV?d00001\n"),
        "diff --git a/w.pt b/w.pt\nindex 1111111..2222222 100644\nBinary files a/w.pt and b/w.pt differ\n",
        "Binary files a/w.pt and b/w.pt differ\n",
    ],
)
def test_binary_patches_are_refused(src: Path, dest: Path, diff: str) -> None:
    outcome = apply_patch(diff, src, dest, LOCKED)
    assert outcome.status == "refused"
    assert "binary" in outcome.reason
    assert not dest.exists()


def test_new_symlink_in_diff_is_refused(src: Path, dest: Path) -> None:
    diff = ("diff --git a/link.py b/link.py\nnew file mode 120000\nindex 0000000..1234567\n--- /dev/null\n"
            "+++ b/link.py\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n")
    outcome = apply_patch(diff, src, dest, LOCKED)
    assert outcome.status == "refused"
    assert "120000" in outcome.reason
    assert outcome.files == ("link.py",)
    assert not dest.exists()


def test_garbage_fails_with_no_diff_found(src: Path, dest: Path) -> None:
    outcome = apply_patch("I think we should raise the learning rate.\n\n- lr: 0.003\n", src, dest, LOCKED)
    assert outcome == PatchOutcome("failed", NO_DIFF, (), "")
    assert not dest.exists()


def test_hunks_without_file_headers_fail_with_a_reason(src: Path, dest: Path) -> None:
    outcome = apply_patch("```diff\n@@ -3,1 +3,1 @@\n-lr = 0.0015\n+lr = 0.003\n```", src, dest, LOCKED)
    assert outcome.status == "failed" and "file headers" in outcome.reason


def test_context_mismatch_fails_and_leaves_no_trace(src: Path, dest: Path) -> None:
    before = snapshot(src)
    # Hunk 1 is fine, hunk 2 cannot match: patch would apply half of it in place.
    diff = GOOD + ("@@ -10,3 +10,3 @@\n     for epoch in range(999):\n-        loss = nonsense(step)\n"
                   "+        loss = other(step)\n         x = y\n")
    outcome = apply_patch(diff, src, dest, LOCKED)
    assert outcome.status == "failed"
    assert "Hunk #2 FAILED" in outcome.reason and "train.py" in outcome.reason
    assert outcome.files == ("train.py",) and outcome.diff == normalize_diff(diff)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary copy is gone too
    assert snapshot(src) == before


def test_fuzz_and_offset_tolerate_slightly_wrong_diffs(src: Path, dest: Path) -> None:
    # Line numbers are off by 5 and the first context line is wrong: GNU patch still applies it.
    diff = ("--- train.py\n+++ train.py\n@@ -15,4 +15,4 @@ def train():\n     model = build_it()\n \n"
            "-    for step in range(100):\n+    for step in range(200):\n         loss = model(step)\n")
    applied(apply_patch(diff, src, dest, LOCKED))
    assert "range(200)" in (dest / "train.py").read_text()


def test_existing_dest_is_a_caller_bug(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    with pytest.raises(FileExistsError):
        apply_patch(GOOD, src, dest, LOCKED)


def test_normalize_fixes_headers_and_crlf() -> None:
    diff = (
        "--- ./train.py\t2024-01-01 10:00:00.000000000 +0000\r\n+++ ./train.py 2024-01-02 11:00:00\r\n"
        "@@ -3 +3 @@\r\n-lr = 0.0015\r\n+lr = 0.003\r\n"
        "--- a/a/x.py\n+++ b/a/x.py\n@@ -1,1 +1,1 @@\n-1\n+2\n"
    )
    expected = (
        "--- a/train.py\n+++ b/train.py\n@@ -3,1 +3,1 @@\n-lr = 0.0015\n+lr = 0.003\n"
        "--- a/a/x.py\n+++ b/a/x.py\n@@ -1,1 +1,1 @@\n-1\n+2\n"
    )
    assert normalize_diff(diff) == expected
    assert normalize_diff(expected) == expected  # idempotent
    assert touched_paths(diff) == ("train.py", "a/x.py")


def test_normalize_drops_trailing_prose_and_keeps_no_newline_marker() -> None:
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1,5 +1,9 @@ def f():\n-a\n+b\n\\ No newline at end of file\n\n\nThat's all.\n"
    assert normalize_diff(diff) == ("--- a/x.py\n+++ b/x.py\n@@ -1,1 +1,1 @@ def f():\n-a\n+b\n"
                                    "\\ No newline at end of file\n")


def test_hunk_header_without_numbers_is_located_by_context(src: Path, dest: Path) -> None:
    diff = ("--- a/train.py\n+++ b/train.py\n@@ ... @@\n         loss.backward()\n-    return loss\n"
            "+    return loss.item()\n")
    assert "@@ -1,2 +1,2 @@\n         loss.backward()\n" in normalize_diff(diff)
    applied(apply_patch(diff, src, dest, LOCKED))
    assert (dest / "train.py").read_text().endswith("return loss.item()\n")


def test_renames_count_as_touched_paths(src: Path) -> None:
    diff = "diff --git a/train.py b/eval.py\nsimilarity index 100%\nrename from train.py\nrename to eval.py\n"
    assert set(touched_paths(diff)) == {"train.py", "eval.py"}
    assert "locked" in check_paths(diff, src, LOCKED)


def test_extract_diff_handles_unfenced_and_truncated_replies() -> None:
    assert extract_diff("Here you go:\n" + GOOD) == GOOD
    assert extract_diff("```diff\n" + GOOD) == GOOD  # reply cut off before the closing fence
    assert extract_diff("```python\nprint('no diff')\n```\nnothing else") == ""


def test_git_header_without_minus_plus_lines_gets_them(src: Path, dest: Path) -> None:
    diff = "diff --git a/train.py b/train.py\n@@ -3,1 +3,1 @@\n-lr = 0.0015\n+lr = 0.003\n"
    assert normalize_diff(diff).startswith("diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@")
    applied(apply_patch(diff, src, dest, LOCKED))
    assert "lr = 0.003\n" in (dest / "train.py").read_text()
