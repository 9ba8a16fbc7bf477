"""Which preset, if any, a prompt asks for.

Every comparison is between *normalised* texts (:func:`normalise`: Unicode NFKC, casefold,
punctuation and symbols replaced by spaces, whitespace collapsed). Three steps; the first one
that finds something decides:

1. **exact**: the prompt equals one of a preset's triggers (its quick-start prompts). Score 1.0.
2. **fuzzy**: ``difflib.SequenceMatcher`` ratio between the prompt and a trigger is at least
   ``FUZZY_THRESHOLD`` (0.85): a typo or small edit of a quick-start prompt. Score = the ratio.
3. **keywords**: every preset gets

       score = min(1.0, KEYWORD_WEIGHT * keyword_hits + OVERLAP_WEIGHT * overlap)   # 0.4, 0.6

   ``keyword_hits`` counts the preset's keywords found in the prompt (ASCII keywords as whole
   words, others as substrings, so Chinese needs no word segmentation); ``overlap`` is the share
   of the prompt's content tokens that also occur in the preset's title, description and
   keywords (tokens: ASCII words of 3+ letters minus stopwords; Chinese/Japanese/Korean text:
   character bigrams, minus those holding a function character such as 的 or 一).
   The best preset wins if its score is at least ``KEYWORD_THRESHOLD`` (0.7) and beats the
   runner-up by at least ``KEYWORD_MARGIN`` (0.1).

Otherwise no preset matches (method ``none``, score = the best keyword score). Two presets
tied for first place in any step also give ``none``: guessing between two starters is worse
than starting from nothing.

What the keyword weights mean in practice: without a keyword nothing matches (0.6 < 0.7); two
keywords match on their own (0.8); one keyword needs at least half of the prompt's content
tokens to be on topic. So "a todo list app" does not become a landing page because of the one
word "app", and "manage my stock portfolio spreadsheet in python" is not a portfolio website.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from app.presets.manifest import Preset

__all__ = [
    "FUZZY_THRESHOLD",
    "KEYWORD_MARGIN",
    "KEYWORD_THRESHOLD",
    "KEYWORD_WEIGHT",
    "OVERLAP_WEIGHT",
    "Match",
    "Matcher",
    "Method",
    "match_prompt",
    "normalise",
    "tokens",
]

FUZZY_THRESHOLD = 0.85
KEYWORD_WEIGHT = 0.4
OVERLAP_WEIGHT = 0.6
KEYWORD_THRESHOLD = 0.7
KEYWORD_MARGIN = 0.1
_DIGITS = 9  # scores are compared after rounding: float noise must not decide a threshold

Method = Literal["exact", "fuzzy", "keywords", "none"]

_SPACES = re.compile(r"\s+")
_MAX_CACHED_CODE_POINTS = 20_000
_ASCII_WORD = re.compile(r"[a-z]{3,}")
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
# Words that say nothing about *which* site is wanted; they would only dilute the overlap.
_STOPWORD_TEXT = """
the and for with our your you that this from are was were can could would should will make build
create want need please help some any into out its their them they has have had but not all one
two get got let like just very also then than what which who how new use using mine
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# A CJK bigram holding one of these is grammar ("的作", "一个", "帮我"), not topic.
_CJK_FUNCTION_CHARS = frozenset("的一个了是在和与我你他她它们这那帮请给把要想做吧吗呢啊")


@dataclass(frozen=True, slots=True)
class Match:
    preset: Preset | None
    score: float  # 0..1
    method: Method

    @property
    def name(self) -> str | None:
        return None if self.preset is None else self.preset.name


class _PunctuationToSpace(dict[int, str]):
    """A ``str.translate`` table mapping P* (punctuation) and S* (symbols) to a space.

    Filled lazily, one code point at a time: a full table would hold the whole of Unicode. The
    size cap keeps prompts full of rare characters from growing it without bound.
    """

    def __missing__(self, code: int) -> str:
        char = chr(code)
        mapped = " " if unicodedata.category(char)[0] in "PS" else char
        if len(self) < _MAX_CACHED_CODE_POINTS:
            self[code] = mapped
        return mapped


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def normalise(text: str) -> str:
    """NFKC (full-width → ASCII), casefold, punctuation/symbols → spaces, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", folded.translate(_PUNCTUATION_TO_SPACE)).strip()


def tokens(normalised: str) -> frozenset[str]:
    """Content tokens of normalised text: ASCII words (3+ letters, no stopwords) and CJK bigrams."""
    words = {word for word in _ASCII_WORD.findall(normalised) if word not in _STOPWORDS}
    for run in _CJK_RUN.findall(normalised):
        pairs = [run[i : i + 2] for i in range(len(run) - 1)] or [run]
        words.update(pair for pair in pairs if not _CJK_FUNCTION_CHARS.intersection(pair))
    return frozenset(words)


def _whole_word(keyword: str) -> re.Pattern[str] | None:
    """ASCII keywords must be whole words ("app" is not in "happy"); others match as substrings."""
    return re.compile(rf"(?<![a-z0-9]){re.escape(keyword)}(?![a-z0-9])") if keyword.isascii() else None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One preset with everything the matcher needs precomputed (normalised once, not per prompt)."""

    preset: Preset
    triggers: tuple[str, ...]  # normalised
    keywords: tuple[tuple[str, re.Pattern[str] | None], ...]  # normalised keyword, whole-word pattern
    vocabulary: frozenset[str]

    @classmethod
    def build(cls, preset: Preset) -> _Compiled:
        keywords = {normalise(keyword) for keyword in preset.keywords} - {""}
        about = normalise(" ".join((preset.title, preset.description, *preset.keywords)))
        return cls(
            preset=preset,
            triggers=tuple(trigger for trigger in map(normalise, preset.triggers) if trigger),
            keywords=tuple((keyword, _whole_word(keyword)) for keyword in sorted(keywords)),
            vocabulary=tokens(about),
        )

    def keyword_score(self, prompt: str, prompt_tokens: frozenset[str]) -> float:
        # The substring test is cheap and rules out most keywords before any regex runs.
        hits = sum(
            1 for word, pattern in self.keywords if word in prompt and (pattern is None or pattern.search(prompt))
        )
        overlap = len(prompt_tokens & self.vocabulary) / len(prompt_tokens) if prompt_tokens else 0.0
        # Rounded so that 0.4 + 0.3 compares equal to the 0.7 threshold, as the docstring promises.
        return round(min(1.0, KEYWORD_WEIGHT * hits + OVERLAP_WEIGHT * overlap), _DIGITS)


def _lengths_allow(prompt: str, trigger: str) -> bool:
    # ratio = 2 * matched / total <= 2 * min(len) / total: most pairs fail on length alone.
    return 2 * min(len(prompt), len(trigger)) >= FUZZY_THRESHOLD * (len(prompt) + len(trigger))


def _fuzzy_ratio(matcher: difflib.SequenceMatcher[str], prompt: str, trigger: str) -> float:
    """ratio(trigger, prompt), where ``matcher`` already holds ``prompt`` as its indexed sequence."""
    if not _lengths_allow(prompt, trigger):
        return 0.0
    matcher.set_seq1(trigger)
    # quick_ratio is a cheap upper bound (characters in common as multisets), ratio the real thing.
    return matcher.ratio() if matcher.quick_ratio() >= FUZZY_THRESHOLD else 0.0


def _best(scored: Iterable[tuple[float, Preset]]) -> tuple[float, Preset | None, float]:
    """(best score, its preset, runner-up score); the preset is None when two tie for first."""
    ranked = sorted(scored, key=lambda pair: pair[0], reverse=True)
    if not ranked:
        return 0.0, None, 0.0
    runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
    winner = ranked[0][1] if ranked[0][0] > runner_up else None
    return ranked[0][0], winner, runner_up


class Matcher:
    """Built once from a set of presets; :meth:`match` is then cheap and thread-safe (read-only)."""

    def __init__(self, presets: Sequence[Preset]) -> None:
        self._compiled = tuple(_Compiled.build(preset) for preset in presets)
        self._exact: dict[str, list[Preset]] = {}
        for compiled in self._compiled:
            for trigger in compiled.triggers:
                owners = self._exact.setdefault(trigger, [])
                if compiled.preset not in owners:
                    owners.append(compiled.preset)

    def match(self, prompt: str) -> Match:
        text = normalise(prompt)
        if not text:
            return Match(None, 0.0, "none")
        return self._exact_match(text) or self._fuzzy_match(text) or self._keyword_match(text)

    def _exact_match(self, text: str) -> Match | None:
        owners = self._exact.get(text)
        if owners is None:
            return None
        # Two presets sharing a trigger is a catalog error (`runforge templates check`); refuse to guess.
        return Match(owners[0], 1.0, "exact") if len(owners) == 1 else Match(None, 1.0, "none")

    def _fuzzy_match(self, text: str) -> Match | None:
        if not any(_lengths_allow(text, trigger) for compiled in self._compiled for trigger in compiled.triggers):
            return None  # also spares indexing a huge prompt
        # The prompt is indexed once (difflib indexes the second sequence) and reused for every
        # trigger; the object is local to this call, so matching stays thread-safe.
        matcher = difflib.SequenceMatcher(None, "", text, autojunk=False)
        scored = [
            (max((_fuzzy_ratio(matcher, text, trigger) for trigger in compiled.triggers), default=0.0), compiled.preset)
            for compiled in self._compiled
        ]
        best, winner, _ = _best(scored)
        if best < FUZZY_THRESHOLD:
            return None
        return Match(winner, best, "fuzzy") if winner is not None else Match(None, best, "none")

    def _keyword_match(self, text: str) -> Match:
        prompt_tokens = tokens(text)
        scored = [(compiled.keyword_score(text, prompt_tokens), compiled.preset) for compiled in self._compiled]
        best, winner, runner_up = _best(scored)
        if winner is not None and best >= KEYWORD_THRESHOLD and round(best - runner_up, _DIGITS) >= KEYWORD_MARGIN:
            return Match(winner, best, "keywords")
        return Match(None, best, "none")


@functools.lru_cache(maxsize=16)
def _matcher_for(presets: tuple[Preset, ...]) -> Matcher:
    return Matcher(presets)


def match_prompt(prompt: str, presets: Sequence[Preset]) -> Match:
    """Match ``prompt`` against ``presets`` (see the module docstring for the rules)."""
    return _matcher_for(tuple(presets)).match(prompt)
