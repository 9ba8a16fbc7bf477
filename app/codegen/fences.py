"""A streaming parser for the fenced code blocks in an html / multi_file answer.

The answer arrives in chunks split anywhere (inside a fence, inside a language tag), and the
runtime wants to know live when a block opens and closes, and at the end which files the
answer produces. The rules are CommonMark's, simplified:

- A fence is a line indented by at most 3 spaces that starts with 3 or more backticks or 3 or
  more tildes. A ``` inside a line is text. A backtick fence whose info string contains a
  backtick is text too (CommonMark: that is inline code, as in "```js```").
- The first word of the opening fence's info string is the language, normalised by
  ``normalise_lang``: lowercased, with aliases folded into "html", "css" and "js". No info
  string gives "".
- A block ends at a line holding only a fence of the same character, at least as long as the
  opening one, indented by at most 3 spaces, with trailing spaces or tabs allowed. Any other
  line, including a shorter fence or a fence with an info string, is content: so a ````md
  block can contain ``` lines.
- Content is the text between the fence lines, without the newline before the closing fence.
  Line endings are "\\n" (a CRLF answer gives LF content), and as in CommonMark, up to as many
  leading spaces as the opening fence had are removed from each content line.
- Text outside blocks is prose: it is not kept.

A line is classified when its newline arrives (only then is it known whether a fence line has
an info string, or trailing text), so the parser holds back only the incomplete last line and
the content of the open block. The events and blocks therefore do not depend on how the answer
was chunked. ``close()`` classifies the last line, which usually has no newline (an answer
often ends with its closing fence), and closes a still-open block with ``terminated=False``.

``files_from_blocks`` never writes an unterminated block: it is a truncated answer (the stream
was cut or the model ran out of tokens), and a half file would overwrite a good one. A
completed answer closes its blocks, so nothing is lost in the normal case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from app.codegen.types import CodeGenType


@dataclass(frozen=True, slots=True)
class BlockOpened:
    index: int
    lang: str


@dataclass(frozen=True, slots=True)
class BlockClosed:
    index: int
    lang: str
    content: str
    terminated: bool = True
    """False for a block still open at the end of the stream, closed by ``close()``."""


FenceEvent = BlockOpened | BlockClosed

FILE_FOR_LANG: Mapping[str, str] = MappingProxyType({"html": "index.html", "css": "style.css", "js": "script.js"})

_LANG_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "htm": "html",
        "html5": "html",
        "xhtml": "html",
        "javascript": "js",
        "mjs": "js",
        "ecmascript": "js",
        "css3": "css",
    }
)

_FENCE_LINE = re.compile(r"(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)")
_DOCUMENT_START = re.compile(r"\s*(?:<!doctype\s+html|<html)", re.IGNORECASE)


def normalise_lang(tag: str) -> str:
    tag = tag.lower()
    return _LANG_ALIASES.get(tag, tag)


@dataclass(frozen=True, slots=True)
class _Fence:
    char: str
    length: int
    indent: int
    info: str

    @property
    def can_open(self) -> bool:
        return self.char == "~" or "`" not in self.info

    def closes(self, opening: _Fence) -> bool:
        return self.char == opening.char and self.length >= opening.length and not self.info.strip(" \t")

    @property
    def lang(self) -> str:
        words = self.info.split()
        return normalise_lang(words[0]) if words else ""


def _parse_fence(line: str) -> _Fence | None:
    match = _FENCE_LINE.fullmatch(line)
    if match is None:
        return None
    fence = match["fence"]
    return _Fence(fence[0], len(fence), len(match["indent"]), match["info"])


def _dedent(line: str, indent: int) -> str:
    """Remove up to ``indent`` leading spaces: an indented fence indents its content too."""
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(indent, spaces) :]


class FenceParser:
    """Feed the answer chunk by chunk; each call returns the events its chunk completed."""

    def __init__(self) -> None:
        self._pending: list[str] = []  # pieces of the incomplete last line
        self._opening: _Fence | None = None
        self._lines: list[str] = []  # content lines of the open block
        self._opened = 0
        self._blocks: list[BlockClosed] = []
        self._closed = False

    @property
    def blocks(self) -> list[BlockClosed]:
        """The blocks closed so far, in order (a copy)."""
        return list(self._blocks)

    @property
    def in_block(self) -> bool:
        """Whether a block is open as of the last complete line."""
        return self._opening is not None

    def feed(self, text: str) -> list[FenceEvent]:
        if self._closed:
            raise RuntimeError("FenceParser.feed() after close()")
        events: list[FenceEvent] = []
        start = 0
        while (end := text.find("\n", start)) != -1:
            self._pending.append(text[start:end])
            self._take_line(events)
            start = end + 1
        if start < len(text):
            self._pending.append(text[start:])
        return events

    def close(self) -> list[FenceEvent]:
        """End of stream: classify the last line, then close a still-open block as unterminated."""
        if self._closed:
            return []
        self._closed = True
        events: list[FenceEvent] = []
        if self._pending:
            self._take_line(events)
        if self._opening is not None:
            events.append(self._close_block(self._opening, terminated=False))
        return events

    def _take_line(self, events: list[FenceEvent]) -> None:
        line = "".join(self._pending).removesuffix("\r")
        self._pending.clear()
        fence = _parse_fence(line)
        if self._opening is None:
            if fence is not None and fence.can_open:
                events.append(self._open_block(fence))
        elif fence is not None and fence.closes(self._opening):
            events.append(self._close_block(self._opening, terminated=True))
        else:
            self._lines.append(_dedent(line, self._opening.indent))

    def _open_block(self, fence: _Fence) -> BlockOpened:
        self._opening = fence
        self._opened += 1
        return BlockOpened(self._opened - 1, fence.lang)

    def _close_block(self, opening: _Fence, *, terminated: bool) -> BlockClosed:
        block = BlockClosed(self._opened - 1, opening.lang, "\n".join(self._lines), terminated)
        self._opening = None
        self._lines = []
        self._blocks.append(block)
        return block


def _first_with_lang(blocks: Sequence[BlockClosed], lang: str) -> BlockClosed | None:
    return next((block for block in blocks if block.lang == lang), None)


def _first_document(blocks: Sequence[BlockClosed]) -> BlockClosed | None:
    """A block that is a whole HTML document whatever its tag: models sometimes tag it "xml" or nothing."""
    return next(
        (block for block in blocks if block.lang not in ("css", "js") and _DOCUMENT_START.match(block.content)), None
    )


def files_from_blocks(blocks: Sequence[BlockClosed], code_gen_type: str) -> dict[str, str]:
    """The files an answer's blocks produce: workspace-relative name -> content.

    - html: the first html block becomes index.html; css/js blocks are ignored (the page inlines them).
    - multi_file: the first html, css and js blocks become index.html, style.css and script.js;
      a missing kind is absent (its file keeps its old content).
    - Either: without an html block, the first block holding a whole document becomes index.html.
    - vue_project: nothing; those projects are written through file tools.
    Unterminated and blank blocks are never used. Raises ValueError for an unknown type.
    """
    kind = CodeGenType(code_gen_type)
    if kind is CodeGenType.VUE_PROJECT:
        return {}
    usable = [block for block in blocks if block.terminated and block.content.strip()]
    langs = ("html",) if kind is CodeGenType.HTML else ("html", "css", "js")
    files: dict[str, str] = {}
    for lang in langs:
        block = _first_with_lang(usable, lang)
        if block is not None:
            files[FILE_FOR_LANG[lang]] = block.content
    if "index.html" not in files and (document := _first_document(usable)) is not None:
        files["index.html"] = document.content
    return files


def files_from_answer(text: str, code_gen_type: str) -> dict[str, str]:
    parser = FenceParser()
    parser.feed(text)
    parser.close()
    return files_from_blocks(parser.blocks, code_gen_type)
