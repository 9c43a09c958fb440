"""Answer scoring shared by every evaluation, benchmark and the demo: ``exact_match`` and ``contains``.

Both compare normalised text: case folded, every run of non-word characters
(punctuation, spacing) reduced to one space, so ``" 4821."`` equals ``"4821"``.
``contains`` accepts an answer embedded in a longer reply, as whole words only:
``"1907"`` is not found in ``"19070"``, nor ``"42"`` in ``"142"``. A substring
test would credit such replies, and the fairer comparison with the in-context
baseline (which tends to answer in full sentences) does not need it.

Example:
    >>> exact_match(" Kyushu.", "kyushu"), contains("It lies on Hakata Bay.", "hakata bay")
    (True, True)
    >>> contains("In 19070.", ["1907", "1908"])
    False
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """``text`` case folded, with punctuation and spacing reduced to single spaces between words."""
    return " ".join(_WORD.findall(text.casefold()))


def _accepted(answers: str | Sequence[str]) -> list[str]:
    return [normalize(a) for a in ([answers] if isinstance(answers, str) else answers)]


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """The whole prediction, normalised, equals one of the accepted answers."""
    return normalize(prediction) in _accepted(answers)


def contains(prediction: str, answers: str | Sequence[str]) -> bool:
    """One of the accepted answers occurs in the prediction as whole words (after normalising both)."""
    text = f" {normalize(prediction)} "
    return any(f" {answer} " in text for answer in _accepted(answers) if answer)
