"""Generation types, and the small rule set that picks one from the user's first prompt.

The prompt is NFKC-normalised (so full-width "ＶＵＥ" reads as "vue") and case-folded, then the
rules are tried in order; the first rule with a matching phrase decides:

1. ``vue-keyword`` -> ``vue_project``: the prompt names Vue or Vite, a framework, components,
   routing, a single-page application (SPA), several pages, a project, a dashboard, an admin
   panel or a management system (``VUE_PHRASES``).
2. ``single-file`` -> ``html``: the prompt asks for one HTML file or a single page
   (``SINGLE_FILE_PHRASES``). Rule 1 comes first, so "single-page application" is a Vue project
   while "a single page about cats" is one HTML file.
3. ``default`` -> ``multi_file``: anything else, including an empty prompt.

How a phrase matches:

- An ASCII phrase matches whole words only: "vue" does not fire on "revue", nor "component" on
  "opponent". Digits may follow it, so "vue" matches "Vue3".
- A space inside a phrase matches spaces, hyphens or nothing: "multi page" matches "multi-page"
  and "multipage".
- Chinese has no spaces between words, so Chinese text matches anywhere.
- A phrase right after a negation ("no", "not", "without", "don't use", "不要", "不用", "无需" ...)
  does not count: "a calculator, no framework, just html" is a single-file request.
- Plurals are listed only where they mean the same request: "components" does, but "projects"
  ("a portfolio of my projects") does not ask for a project.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class CodeGenType(StrEnum):
    HTML = "html"
    """The model answers with one ```html block, written to index.html."""
    MULTI_FILE = "multi_file"
    """The model answers with ```html, ```css and ```js blocks: index.html, style.css, script.js."""
    VUE_PROJECT = "vue_project"
    """A Vite + Vue 3 project, edited through file tools and then built."""


@dataclass(frozen=True, slots=True)
class TypeChoice:
    """The chosen type and why, so the choice can be shown to the user and logged."""

    code_gen_type: CodeGenType
    rule: str
    evidence: str | None


@dataclass(frozen=True, slots=True)
class TypeRule:
    rule: str
    code_gen_type: CodeGenType
    phrases: tuple[str, ...]


VUE_PHRASES = (
    # English
    "vue",
    "vuejs",
    "vite",
    "nuxt",
    "framework",
    "component",
    "components",
    "router",
    "routing",
    "single page application",
    "single page app",
    "multi page",
    "multiple pages",
    "several pages",
    "dashboard",
    "admin",
    "project",
    "management system",
    # Chinese
    "项目",
    "框架",
    "组件",
    "路由",
    "单页应用",
    "单页面应用",
    "多页",
    "多个页面",
    "后台",
    "管理系统",
    "仪表盘",
)

SINGLE_FILE_PHRASES = (
    # English
    "single html file",
    "one html file",
    "an html file",
    "a html file",
    "single file",
    "one file",
    "single page",
    "one page",
    "one pager",
    "html only",
    "only html",
    "just html",
    "pure html",
    # Chinese
    "单页",
    "单个页面",
    "单文件",
    "单个文件",
    "一个文件",
    "单个 html",
    "一个 html",
    "纯 html",
    "只用 html",
)

RULES = (
    TypeRule("vue-keyword", CodeGenType.VUE_PROJECT, VUE_PHRASES),
    TypeRule("single-file", CodeGenType.HTML, SINGLE_FILE_PHRASES),
)
DEFAULT_CHOICE = TypeChoice(CodeGenType.MULTI_FILE, "default", None)

# A negation just before a phrase, e.g. "no", "without a", "don't use", "不要用", "无需".
_NEGATION_BEFORE = re.compile(
    r"(?:(?<![a-z0-9])(?:no|not|without|don['’]?t|never|avoid)(?:[\s\-]+(?:a|an|any|the|use|using))*[\s\-]*"
    r"|(?:不|无需|无须|没有|别|勿)(?:是|要|需要|必)?(?:用|使用)?\s*)$"
)
_NEGATION_WINDOW = 40  # characters looked at before a match; negations are short


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Whole-word boundaries at ASCII ends; spaces inside match spaces, hyphens or nothing."""
    body = r"[\s\-_]*".join(re.escape(token) for token in phrase.split(" "))
    head = r"(?<![a-z0-9])" if _is_word_char(phrase[0]) else ""
    tail = r"(?![a-z])" if _is_word_char(phrase[-1]) else ""
    return re.compile(head + body + tail)


_PATTERNS = {phrase: _phrase_pattern(phrase) for rule in RULES for phrase in rule.phrases}


def normalise_prompt(prompt: str) -> str:
    return unicodedata.normalize("NFKC", prompt).casefold()


def _negated(text: str, start: int) -> bool:
    return _NEGATION_BEFORE.search(text, max(0, start - _NEGATION_WINDOW), start) is not None


def _first_phrase(text: str, phrases: tuple[str, ...]) -> str | None:
    """The phrase that matches earliest in the text (the longer one on a tie), ignoring negated matches."""
    found: list[tuple[int, int, str]] = []
    for phrase in phrases:
        for match in _PATTERNS[phrase].finditer(text):
            if not _negated(text, match.start()):
                found.append((match.start(), -len(phrase), phrase))
                break
    return min(found)[2] if found else None


def infer_code_gen_type(prompt: str) -> TypeChoice:
    text = normalise_prompt(prompt)
    for rule in RULES:
        phrase = _first_phrase(text, rule.phrases)
        if phrase is not None:
            return TypeChoice(rule.code_gen_type, rule.rule, phrase)
    return DEFAULT_CHOICE
