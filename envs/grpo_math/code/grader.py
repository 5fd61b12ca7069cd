"""
Grading of validation answers for the grpo_math environment (LOCKED and HIDDEN).

A response is the model's continuation of the r1_zero prompt, which ends inside
"<think>". It is correct when it closes the thinking, gives an answer in
<answer> ... </answer>, and that answer is mathematically equivalent to the
reference (math-verify: 0.5 == \\frac{1}{2}, (x+1)^2 == x^2+2x+1, ...).

math-verify enforces its time limits with signal.alarm, which only works in the
main thread; elsewhere we switch its limits off (the eval grades in the main
thread, so the limits are always on there).
"""
from __future__ import annotations

import re
import threading

from math_verify import parse, verify

TIMEOUT_S = 5  # per parse/verify call; a pathological answer scores 0 instead of hanging the eval
MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers (and could make sympy crawl)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(response: str) -> str | None:
    """The text of the last <answer>...</answer> after </think>, or None if the format is wrong."""
    _, sep, after = response.partition("</think>")
    if not sep:
        return None
    found = _ANSWER.findall(after)
    if not found or len(found[-1]) > MAX_ANSWER_CHARS:
        return None
    return found[-1].strip()


def _timeout_s() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def parse_gold(answer: str) -> list:
    """MATH answers are bare LaTeX ("\\frac{14}{3}"); math-verify wants it delimited."""
    return parse(f"${answer}$", parsing_timeout=_timeout_s())


def parse_prediction(answer: str) -> list:
    # a bare answer is read as LaTeX first ("\\frac12", "p-q" need it), then as it stands
    if "$" not in answer and "\\boxed" not in answer:
        parsed = parse(f"${answer}$", parsing_timeout=_timeout_s())
        if parsed:
            return parsed
    return parse(answer, parsing_timeout=_timeout_s())


def is_equivalent(gold: list, prediction: str) -> bool:
    if not gold or not prediction:
        return False
    try:
        return bool(verify(gold, parse_prediction(prediction), timeout_seconds=_timeout_s()))
    except Exception:  # a malformed prediction is a wrong answer, never a crash of the eval
        return False


def grade(response: str, gold: list) -> bool:
    """Is the response correctly formatted and its answer equivalent to the parsed gold answer?"""
    answer = extract_answer(response)
    return answer is not None and is_equivalent(gold, answer)
