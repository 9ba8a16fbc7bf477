"""Choosing a generation type from a prompt, and parsing the fenced blocks of a streamed answer."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from app.codegen import (
    FILE_FOR_LANG,
    BlockClosed,
    BlockOpened,
    CodeGenType,
    FenceEvent,
    FenceParser,
    TypeChoice,
    files_from_answer,
    files_from_blocks,
    infer_code_gen_type,
)
from app.codegen.types import RULES

VUE = CodeGenType.VUE_PROJECT
HTML = CodeGenType.HTML
MULTI = CodeGenType.MULTI_FILE


# --- generation type rules -----------------------------------------------------------------------

TYPE_CASES: list[tuple[str, CodeGenType, str | None]] = [
    # (prompt, expected type, expected evidence)
    ("build a vue todo app", VUE, "vue"),
    ("A Vue.js weather widget", VUE, "vue"),
    ("用 Vue3 做一个记账本", VUE, "vue"),
    ("a VueJS quiz", VUE, "vuejs"),
    ("Vite + TypeScript starter", VUE, "vite"),
    ("admin dashboard", VUE, "admin"),
    ("a dashboard for my sales numbers", VUE, "dashboard"),
    ("single page application with vue router", VUE, "single page application"),
    ("a Single-Page App for booking tables", VUE, "single page app"),
    ("an SPA for my notes", MULTI, None),  # bare "spa" is not a rule: "a day spa" is a business
    ("a multi-page site for a dental clinic", VUE, "multi page"),
    ("a website with multiple pages", VUE, "multiple pages"),
    ("a card list built from reusable components", VUE, "components"),
    ("a shop with client-side routing", VUE, "routing"),
    ("set up a project for a recipe site", VUE, "project"),
    ("图书管理系统", VUE, "管理系统"),
    ("做一个博客后台", VUE, "后台"),
    ("一个带路由的博客", VUE, "路由"),
    ("一个单页应用", VUE, "单页应用"),
    ("用组件化的方式写一个商城", VUE, "组件"),
    ("ＶＵＥ 计数器", VUE, "vue"),
    ("a spaceship game", MULTI, None),
    ("opponent tracker for my chess club", MULTI, None),
    ("spaghetti recipe page", MULTI, None),
    ("a page for the administration office", MULTI, None),
    ("a portfolio showing my projects", MULTI, None),
    ("landing page for my bakery", MULTI, None),
    ("a todo list app", MULTI, None),
    ("", MULTI, None),
    ("   ", MULTI, None),
    ("a single page about cats", HTML, "single page"),
    ("a one-page resume", HTML, "one page"),
    ("put everything in a single HTML file", HTML, "single html file"),
    ("Snake game in one file", HTML, "one file"),
    ("an HTML5 clock, html only", HTML, "html only"),
    ("a calculator, no framework, just html", HTML, "just html"),
    ("don't use vue, a single page is enough", HTML, "single page"),
    ("一个单页的个人介绍", HTML, "单页"),
    ("只用一个HTML文件实现贪吃蛇", HTML, "一个 html"),
    ("不要用vue，单文件就行", HTML, "单文件"),
    ("not a single page app, just a single page", HTML, "single page"),
]


@pytest.mark.parametrize(("prompt", "expected", "evidence"), TYPE_CASES)
def test_type_rules(prompt: str, expected: CodeGenType, evidence: str | None) -> None:
    choice = infer_code_gen_type(prompt)
    assert (choice.code_gen_type, choice.evidence) == (expected, evidence)
    rule = {VUE: "vue-keyword", HTML: "single-file", MULTI: "default"}[expected]
    assert choice.rule == rule


def test_default_choice_has_no_evidence() -> None:
    assert infer_code_gen_type("a todo app") == TypeChoice(MULTI, "default", None)


def test_every_phrase_fires_on_its_own() -> None:
    """No phrase is dead: each, alone in a prompt, selects its rule with itself as evidence."""
    for rule in RULES:
        for phrase in rule.phrases:
            assert infer_code_gen_type(f"make {phrase} now") == TypeChoice(rule.code_gen_type, rule.rule, phrase)


def test_code_gen_type_values_match_the_api() -> None:
    assert [kind.value for kind in CodeGenType] == ["html", "multi_file", "vue_project"]


# --- fence parsing --------------------------------------------------------------------------------

THREE_BLOCKS = (
    "Here is a counter.\n"
    "```html\n<!doctype html>\n<html>\n<body><button>0</button></body>\n</html>\n```\n"
    "Some styles:\n"
    "```css\nbutton { color: red; }\n```\n"
    "```js\ndocument.querySelector('button').onclick = () => {};\n```\n"
    "Click the button."
)
HTML_CONTENT = "<!doctype html>\n<html>\n<body><button>0</button></body>\n</html>"
CSS_CONTENT = "button { color: red; }"
JS_CONTENT = "document.querySelector('button').onclick = () => {};"


def parse(chunks: Iterable[str]) -> tuple[list[FenceEvent], list[BlockClosed]]:
    parser = FenceParser()
    events: list[FenceEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events, parser.blocks


def parse_text(text: str) -> list[BlockClosed]:
    return parse([text])[1]


def random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks: list[str] = []
    start = 0
    while start < len(text):
        size = rng.randint(1, 20)
        chunks.append(text[start : start + size])
        start += size
    return chunks


def test_three_blocks_events_and_files() -> None:
    events, blocks = parse([THREE_BLOCKS])
    assert events == [
        BlockOpened(0, "html"),
        BlockClosed(0, "html", HTML_CONTENT),
        BlockOpened(1, "css"),
        BlockClosed(1, "css", CSS_CONTENT),
        BlockOpened(2, "js"),
        BlockClosed(2, "js", JS_CONTENT),
    ]
    assert blocks == [event for event in events if isinstance(event, BlockClosed)]
    assert files_from_blocks(blocks, "multi_file") == {
        "index.html": HTML_CONTENT,
        "style.css": CSS_CONTENT,
        "script.js": JS_CONTENT,
    }
    assert files_from_answer(THREE_BLOCKS, "html") == {"index.html": HTML_CONTENT}


def test_events_arrive_as_lines_complete() -> None:
    parser = FenceParser()
    in_block: list[bool] = [parser.in_block]
    assert parser.feed("intro\n``") == []
    assert parser.feed("`ht") == []
    assert parser.feed("ml\n") == [BlockOpened(0, "html")]
    in_block.append(parser.in_block)
    assert parser.feed("<p>hi</p>\n") == []
    assert parser.feed("```") == []  # could still be "```x", which is content
    in_block.append(parser.in_block)
    assert parser.feed("\n") == [BlockClosed(0, "html", "<p>hi</p>")]
    in_block.append(parser.in_block)
    assert in_block == [False, True, True, False]
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(RuntimeError):
        parser.feed("more")


@pytest.mark.parametrize(
    ("tag", "lang"),
    [
        ("html", "html"),
        ("HTML", "html"),
        ("htm", "html"),
        ("html5", "html"),
        ("xhtml", "html"),
        ("javascript", "js"),
        ("JavaScript", "js"),
        ("js", "js"),
        ("mjs", "js"),
        ("ecmascript", "js"),
        ("css", "css"),
        ("CSS3", "css"),
        ("Python", "python"),
        ("vue", "vue"),
        ("", ""),
        ("html title=index", "html"),
        ("  js  ", "js"),
    ],
)
def test_language_aliases(tag: str, lang: str) -> None:
    assert parse_text(f"```{tag}\nx\n```\n") == [BlockClosed(0, lang, "x")]


def test_tilde_fences_and_backticks_inside() -> None:
    text = "~~~html\n<p>```not a fence```</p>\n```\n~~\n~~~~\n"
    assert parse_text(text) == [BlockClosed(0, "html", "<p>```not a fence```</p>\n```\n~~")]


def test_longer_fence_contains_shorter_fences() -> None:
    text = "````markdown\n```html\n<p>inner</p>\n```\n````\n```css\na{}\n```"
    assert parse_text(text) == [
        BlockClosed(0, "markdown", "```html\n<p>inner</p>\n```"),
        BlockClosed(1, "css", "a{}"),
    ]
    assert files_from_answer(text, "multi_file") == {"style.css": "a{}"}


def test_closing_fence_may_be_longer_and_have_trailing_spaces() -> None:
    assert parse_text("```js\na\n`````  \t\nrest") == [BlockClosed(0, "js", "a")]


def test_fence_with_info_does_not_close() -> None:
    assert parse_text("```js\na\n```css\nb\n```") == [BlockClosed(0, "js", "a\n```css\nb")]


def test_indented_fences() -> None:
    text = "1. The page:\n   ```html\n   <p>\n     hi\n  </p>\n   ```\n    ```css\nnot a fence\n"
    assert parse_text(text) == [BlockClosed(0, "html", "<p>\n  hi\n</p>")]


def test_fence_inside_a_line_is_text() -> None:
    text = "Use a ```html block.\nx ```js\n```js\nlet a = '```';\n  x```\n```"
    assert parse_text(text) == [BlockClosed(0, "js", "let a = '```';\n  x```")]


def test_backtick_fence_with_backtick_in_info_is_text() -> None:
    assert parse_text("```js```\n~~~js`x\nok\n~~~\n") == [BlockClosed(0, "js`x", "ok")]


def test_crlf() -> None:
    text = THREE_BLOCKS.replace("\n", "\r\n")
    assert files_from_answer(text, "multi_file") == {
        "index.html": HTML_CONTENT,
        "style.css": CSS_CONTENT,
        "script.js": JS_CONTENT,
    }


def test_empty_and_blank_line_content() -> None:
    assert parse_text("```html\n```\n```css\n\n\na\n\n```\n") == [
        BlockClosed(0, "html", ""),
        BlockClosed(1, "css", "\n\na\n"),
    ]


def test_unterminated_block_at_close() -> None:
    parser = FenceParser()
    assert parser.feed("```css\na{}\n```html\n<p>cut") == [BlockOpened(0, "css")]
    assert parser.close() == [BlockClosed(0, "css", "a{}\n```html\n<p>cut", terminated=False)]
    events, blocks = parse(["ok\n```html\n<p>a</p>\n```\n```js\nlet x ="])
    assert blocks == [BlockClosed(0, "html", "<p>a</p>"), BlockClosed(1, "js", "let x =", terminated=False)]
    assert events[-1] == blocks[-1]
    assert files_from_blocks(blocks, "multi_file") == {"index.html": "<p>a</p>"}


def test_last_fence_without_newline_closes() -> None:
    assert parse(["```html\n<p>a</p>\n```"])[0][-1] == BlockClosed(0, "html", "<p>a</p>")


def test_opening_fence_at_end_of_stream() -> None:
    assert parse(["text\n```html"])[0] == [BlockOpened(0, "html"), BlockClosed(0, "html", "", terminated=False)]


def test_no_blocks() -> None:
    assert parse(["Just prose, ``` inline, no blocks.\n"]) == ([], [])
    assert files_from_answer("Just prose.", "multi_file") == {}
    assert files_from_answer("", "html") == {}


# Answers whose parse must not depend on chunking: fences split everywhere, CRLF, indents.
CHUNKING_ANSWERS = [
    THREE_BLOCKS,
    THREE_BLOCKS.replace("\n", "\r\n"),
    "  ~~~~ JavaScript extra\r\n  a\r\n ~~~\r\n  ~~~~~ \r\ntail ```css\n```",
    "````md\n```html\nx\n```\n````\n```html5\n<p>``` </p>\n```",
    "```\n\n```\n```js",
]


@pytest.mark.parametrize("text", CHUNKING_ANSWERS)
def test_every_two_way_split_gives_the_same_parse(text: str) -> None:
    whole = parse([text])
    for cut in range(len(text) + 1):
        assert parse([text[:cut], text[cut:]]) == whole, cut
    assert parse(list(text)) == whole


@pytest.mark.parametrize("text", CHUNKING_ANSWERS)
def test_random_chunkings_give_the_same_parse(text: str) -> None:
    whole = parse([text])
    rng = random.Random(f"fences:{text}")
    for _ in range(300):
        assert parse(random_chunks(text, rng)) == whole


def test_html_type_takes_only_index_html() -> None:
    assert files_from_answer(THREE_BLOCKS, CodeGenType.HTML) == {"index.html": HTML_CONTENT}
    assert files_from_answer("```css\na{}\n```\n```js\nb\n```", "html") == {}


def test_first_block_of_each_kind_wins() -> None:
    text = "```html\n<p>1</p>\n```\n```html\n<p>2</p>\n```\n```js\none\n```\n```javascript\ntwo\n```"
    assert files_from_answer(text, "multi_file") == {"index.html": "<p>1</p>", "script.js": "one"}


def test_multi_file_missing_css() -> None:
    text = "```html\n<p>a</p>\n```\n```js\nlet a = 1;\n```"
    assert files_from_answer(text, "multi_file") == {"index.html": "<p>a</p>", "script.js": "let a = 1;"}


def test_other_languages_are_ignored() -> None:
    text = "```python\nprint(1)\n```\n```vue\n<template/>\n```\n```\nplain\n```\n```css\na{}\n```"
    assert files_from_answer(text, "multi_file") == {"style.css": "a{}"}


def test_untagged_whole_document_becomes_index_html() -> None:
    document = "<!DOCTYPE html>\n<html><body>hi</body></html>"
    assert files_from_answer(f"```\n{document}\n```", "html") == {"index.html": document}
    assert files_from_answer("```xml\n  <html>\n```\n```css\na{}\n```", "multi_file") == {
        "index.html": "  <html>",
        "style.css": "a{}",
    }
    assert files_from_answer("```\n<div>fragment</div>\n```", "html") == {}


def test_blank_blocks_are_not_used() -> None:
    assert files_from_answer("```html\n   \n```\n```html\n<p>b</p>\n```", "html") == {"index.html": "<p>b</p>"}


def test_vue_project_and_unknown_types() -> None:
    assert files_from_answer(THREE_BLOCKS, "vue_project") == {}
    with pytest.raises(ValueError, match="react"):
        files_from_answer(THREE_BLOCKS, "react")


def test_file_for_lang() -> None:
    assert dict(FILE_FOR_LANG) == {"html": "index.html", "css": "style.css", "js": "script.js"}
