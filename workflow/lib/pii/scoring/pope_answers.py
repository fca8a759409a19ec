"""POPE answer parsing and metrics.

Two parsers read a model's free-text answer:

* ``parse_official`` is POPE's own rule (AoiDragon/POPE ``evaluate.py``): keep the text before the first '.',
  drop commas, split on single spaces; if one of the words is exactly ``No``, ``not`` or ``no`` the answer is
  "no", otherwise "yes". It is case-sensitive ("Not sure" and "NO" read as yes), splits on ' ' only ("No\\n" is
  one word, read as yes) and turns an empty answer into "yes". These quirks are kept on purpose: the
  paper-comparable numbers use this rule.
* ``parse_strict`` answers yes / no / unknown and is meant to be read beside it: a leading yes/no word decides;
  otherwise a hedge ("not sure", "cannot determine") is unknown, a negation in the first sentence ("there is no",
  "not", "n't", "none") is no, an existential statement ("there is", "I can see") is yes, anything else unknown.

Metrics come from a 2 x 3 count table (label yes/no x prediction yes/no/unknown), so the same code serves the
point estimate and every bootstrap resample. Rule for degenerate input: a ratio whose denominator is zero is
NaN (never an exception, never a silent 0). F1 is computed as 2TP / (2TP + FP + FN) -- equal to the harmonic
mean of precision and recall whenever both exist, 0 when there are positives or yes answers but no true
positive, NaN only when there are neither. Unknown answers stay in every per-sample denominator (accuracy,
yes-ratio, recall over all positives) and are never a "yes".
"""

from __future__ import annotations

import re

import numpy as np

from pii.scoring.stats import ratio as _div

YES, NO, UNKNOWN = "yes", "no", "unknown"
PRED_CODE = {NO: 0, YES: 1, UNKNOWN: 2}
# Count table layout: index = label_is_yes * 3 + prediction code.
N_CELLS = 6

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse_official(text: str | None) -> str:
    """POPE's evaluate.py rule, quirks included (see the module docstring)."""
    text = "" if text is None else str(text)
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return NO if ("No" in words or "not" in words or "no" in words) else YES


_LEAD = re.compile(r"^[\s\"'*`>#\-\u2022(\[]*(?:answer\s*:\s*)?[\s\"'*`(\[]*([a-z]+)")
_LEAD_YES = {"yes", "yeah", "yep", "yup", "correct", "true", "affirmative"}
_LEAD_NO = {"no", "nope", "false", "incorrect"}
_HEDGE = re.compile(
    r"\b(?:not sure|unsure|uncertain|unclear|cannot (?:be )?(?:determine|determined|tell|say|confirm)|"
    r"can ?not (?:determine|tell|say)|can't (?:determine|tell|say|confirm)|unable to|impossible to (?:tell|say)|"
    r"not possible to|hard to (?:tell|say)|difficult to (?:tell|say|determine))\b"
)
_NEGATION = re.compile(r"\b(?:no|not|none|nothing|neither|nor|without|absent)\b|n't\b")
_EXISTS = re.compile(
    r"\b(?:there (?:is|are|'s)|i (?:can )?see|is (?:present|visible)|are (?:present|visible)|contains?|yes)\b"
)


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0]


def parse_strict(text: str | None) -> str:
    """yes / no / unknown; documented in the module docstring."""
    text = ("" if text is None else str(text)).strip().lower().replace("\u2019", "'")
    if not text:
        return UNKNOWN
    lead = _LEAD.match(text)
    if lead:
        word = lead.group(1)
        if word in _LEAD_YES:
            return YES
        if word in _LEAD_NO:
            return NO
    sentence = _first_sentence(text)
    if _HEDGE.search(sentence):
        return UNKNOWN
    if _NEGATION.search(sentence):
        return NO
    if _EXISTS.search(sentence):
        return YES
    return UNKNOWN


def cell_codes(labels, predictions) -> np.ndarray:
    """Per-sample cell of the count table (int8): label_is_yes * 3 + prediction code."""
    labels = np.asarray(labels, dtype=object)
    bad = set(labels.tolist()) - {YES, NO}
    if bad:
        raise ValueError(f"labels must be 'yes' or 'no', got {sorted(map(str, bad))}")
    predictions = np.asarray(predictions, dtype=object)
    is_yes, is_unknown = predictions == YES, predictions == UNKNOWN
    known = is_yes | is_unknown | (predictions == NO)
    if not known.all():
        raise ValueError(f"predictions must be {sorted(PRED_CODE)}, got {str(predictions[~known][0])!r}")
    preds = is_yes.astype(np.int8) * PRED_CODE[YES] + is_unknown.astype(np.int8) * PRED_CODE[UNKNOWN]
    return ((labels == YES).astype(np.int8) * 3 + preds).astype(np.int8)


def counts_of(codes: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=N_CELLS)[:N_CELLS]


def metrics_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from count tables of shape (..., 6); every value has shape ``counts.shape[:-1]``."""
    c = np.asarray(counts, dtype=float)
    fn, tp, unk_pos = c[..., 3], c[..., 4], c[..., 5]
    tn, fp, unk_neg = c[..., 0], c[..., 1], c[..., 2]
    n = c.sum(axis=-1)
    positives = tp + fn + unk_pos
    return {
        "accuracy": _div(tp + tn, n),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, positives),
        "f1": _div(2 * tp, 2 * tp + fp + fn + unk_pos),
        "yes_ratio": _div(tp + fp, n),
        "unknown_ratio": _div(unk_pos + unk_neg, n),
    }


def confusion(counts: np.ndarray) -> dict[str, int]:
    """TP/FP/TN/FN (unknown answers are in none of them), n and n_unknown from one count table."""
    c = [int(x) for x in counts]
    return {"tp": c[4], "fp": c[1], "tn": c[0], "fn": c[3], "n": sum(c), "n_unknown": c[2] + c[5]}
