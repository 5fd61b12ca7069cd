"""Regenerate quickstart.jsonl: a scripted recording of LLM answers for the tiny_lm quickstart.

The quickstart must run with no API key, so its ideator and implementer answers come from this file
(the banner says so). Ideas are real hyper-parameter and architecture changes to envs/tiny_lm/code/train.py
and each diff is computed here against the current file, so the recording never drifts from the code:
    python configs/replay/make_quickstart.py
"""
from __future__ import annotations

import json
from pathlib import Path

from toolkit.testing.diffs import make_diff

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "envs" / "tiny_lm" / "code" / "train.py"
OUT = Path(__file__).with_name("quickstart.jsonl")

# (title, description, [(old, new), ...]) -- each old string occurs exactly once in train.py
IDEAS = [
    ("Higher peak learning rate", "Raise learning_rate from 3e-3 to 6e-3: in a budget of a few hundred steps "
     "a tiny model benefits from larger steps.", [("learning_rate = 3e-3", "learning_rate = 6e-3")]),
    ("Smaller batch, more steps", "Halve batch_size from 16 to 8 so that twice as many optimiser steps fit in "
     "the wall-clock budget.", [("batch_size = 16", "batch_size = 8")]),
    ("Shorter warmup", "Cut warmup_frac from 0.05 to 0.01: the pre-norm model is stable from the start and "
     "warmup wastes budget.", [("warmup_frac = 0.05", "warmup_frac = 0.01")]),
    ("Wider, shallower model", "Use n_layer = 2 and n_embd = 128: fewer sequential layers run faster on one "
     "core while the wider residual keeps capacity.", [("n_layer = 3\n", "n_layer = 2\n"),
                                                     ("n_embd = 96\n", "n_embd = 128\n")]),
    ("No weight decay", "Set weight_decay to 0.0: far less than one epoch is trained, so regularisation only "
     "slows learning.", [("weight_decay = 0.1", "weight_decay = 0.0")]),
    ("Higher beta2", "Set beta2 to 0.99 for smoother second-moment estimates of Adam.",
     [("beta1, beta2 = 0.9, 0.95", "beta1, beta2 = 0.9, 0.99")]),
    ("Decay to zero", "Set min_lr_ratio to 0.0 so the cosine schedule anneals fully by the end of the budget.",
     [("min_lr_ratio = 0.1", "min_lr_ratio = 0.0")]),
    ("Looser gradient clipping", "Raise grad_clip from 1.0 to 2.0 so early large gradients are not cut.",
     [("grad_clip = 1.0", "grad_clip = 2.0")]),
    ("ReLU-squared MLP", "Replace GELU in the MLP with squared ReLU (relu(x)**2), cheaper and reported to "
     "train faster in speedruns.", [("F.gelu(self.c_fc(x))", "F.relu(self.c_fc(x)).square()")]),
    ("Fewer heads", "Use n_head = 2 (head size 48): fewer, larger heads are cheaper on one CPU core.",
     [("n_head = 4\n", "n_head = 2\n")]),
]


def diff_for(changes: list[tuple[str, str]]) -> str:
    return make_diff(TRAIN.parent, TRAIN.name, *(s for pair in changes for s in pair))


def ideation_entries() -> list[dict]:
    """Ideation answers cycle through the idea list two at a time, per mode (matched by the call's tag)."""
    entries = []
    for offset, mode in enumerate(("fresh", "explore", "exploit")):
        for n in range(0, len(IDEAS), 2):
            start = (n + 4 * offset) % len(IDEAS)  # each mode starts elsewhere, so epochs differ
            pair = [{"title": t, "description": d} for t, d, _ in IDEAS[start:start + 2]]
            if mode == "exploit":
                pair = [{"title": f"{p['title']} (refined)", "description": p["description"] +
                         " Combine it with what worked best so far."} for p in pair]
            entries.append({"match": f"ideate:{mode}:", "text": json.dumps(pair, indent=1), "model": "replay"})
    return entries


def implement_entries() -> list[dict]:
    return [{"match": f"# The idea to implement\n{title}", "text": f"```diff\n{diff_for(changes)}```\n",
             "model": "replay"} for title, _, changes in IDEAS]


if __name__ == "__main__":
    entries = ideation_entries() + implement_entries()
    OUT.write_text("".join(json.dumps(e) + "\n" for e in entries))
    print(f"wrote {len(entries)} entries to {OUT}")
