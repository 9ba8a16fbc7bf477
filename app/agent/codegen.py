"""A run's job: seed the workspace from a preset, generate, build, and publish on completion.

The order is what makes every stop guarantee hold for the new side effects:

1. checkpoint the workspace as it is (the rollback target of this run);
2. match the prompt against the presets and, on a hit, copy the preset into an empty
   workspace: atomically, through the stop gate;
3. generate: a tool loop (vue_project) or one streamed answer whose fenced blocks are
   parsed live (html / multi_file);
4. vue_project: build into a temp dir; a stop kills the build's whole process group;
5. on completion only (:class:`Completion.finalize`, past the point where a stop can land):
   write the answer's files or swap in the new build, and commit the checkpoint.

An interrupted or failed run therefore never writes the answer's files, never publishes a
build and never gets a checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.agent.loop import History, ToolLoop, initial_messages, run_tool_loop, stream_step
from app.builder import BuildFailed, BuildResult, discard_build, publish_build, run_build
from app.checkpoints import CheckpointError, Checkpoints
from app.codegen.fences import FILE_FOR_LANG, BlockClosed, BlockOpened, FenceParser, files_from_blocks
from app.codegen.types import CodeGenType
from app.control.cancel import to_thread_to_the_end
from app.control.events import CodeBlock, TemplateChosen
from app.control.outcomes import Completion, Published, RunFailed
from app.control.run import Run
from app.llm.prompt_format import TEMPLATE_MARKER
from app.llm.stream import ChatStream
from app.presets import Catalog, Preset, PresetError, copy_preset, match_prompt
from app.settings import BuildSettings
from app.workspace import fs

log = logging.getLogger(__name__)

# Current files of an html / multi_file app are shown to the model up to this size each.
MAX_CONTEXT_FILE_CHARS = 100_000


@dataclass(frozen=True, slots=True)
class CodegenDeps:
    llm: ChatStream
    load_history: Callable[[str], Awaitable[History]]
    max_steps: int
    presets: Catalog
    checkpoints: Checkpoints
    build: BuildSettings = field(default_factory=BuildSettings)
    tool_delay_s: float = 0.0


async def run_codegen(run: Run, deps: CodegenDeps) -> Completion:
    await asyncio.to_thread(run.workspace.mkdir, parents=True, exist_ok=True)
    await _checkpoint_before(run, deps.checkpoints)
    preset = await seed_workspace(run, deps.presets)
    history = await deps.load_history(run.code_app_id)
    if run.code_gen_type == CodeGenType.VUE_PROJECT:
        return await _vue_project(run, deps, history, preset)
    return await _static_site(run, deps, history, preset)


# -- 1. checkpoint before ----------------------------------------------------------------


async def _checkpoint_before(run: Run, checkpoints: Checkpoints) -> None:
    run.gate.check()
    try:
        base = await to_thread_to_the_end(checkpoints.base, run.code_app_id, run.workspace, run.id)
    except CheckpointError:
        # Without git the product still generates; only undo is unavailable.
        log.exception("could not checkpoint the workspace before run %s", run.id)
        return

    async def rollback() -> None:
        # To the end even if cancelled again: a new run may only start once the restore is over.
        await to_thread_to_the_end(checkpoints.restore, run.code_app_id, run.workspace, base)
        await to_thread_to_the_end(discard_build, run.workspace)

    run.rollback = rollback


# -- 2. preset ---------------------------------------------------------------------------


async def seed_workspace(run: Run, catalog: Catalog) -> Preset | None:
    """Match the prompt; on a hit, copy the preset into an empty workspace.

    Returns the preset when it was copied (its instruction then joins this run's prompt).
    Any preset error is logged and the run goes on without one.
    """
    match = match_prompt(run.message, catalog.for_type(run.code_gen_type))
    preset = match.preset
    if preset is None:
        log.info("template-no-hit run=%s score=%.3f", run.id, match.score)
        run.emit(TemplateChosen(None, match.score, match.method, copied=False))
        return None
    try:
        copied = await to_thread_to_the_end(copy_preset, preset, run.workspace, run.gate)
    except PresetError:
        log.exception("template-error run=%s template=%s: going on without it", run.id, preset.name)
        copied = False
    log.info(
        "template-hit run=%s template=%s method=%s score=%.3f copied=%s",
        *(run.id, preset.name, match.method, match.score, copied),
    )
    run.emit(TemplateChosen(preset.name, match.score, match.method, copied))
    return preset if copied else None


def with_instruction(message: str, preset: Preset | None) -> str:
    """This run's prompt: the user's message, plus the preset's instruction (never stored)."""
    if preset is None:
        return message
    return f"{message}\n\n{TEMPLATE_MARKER} {preset.name}]\n{preset.instruction.strip()}"


# -- 3-5. vue_project --------------------------------------------------------------------


async def _vue_project(run: Run, deps: CodegenDeps, history: History, preset: Preset | None) -> Completion:
    messages = initial_messages(run.code_gen_type, history, with_instruction(run.message, preset))
    finish_reason = await run_tool_loop(run, ToolLoop(deps.llm, deps.max_steps, deps.tool_delay_s), messages)
    run.gate.check()  # a stopped run never builds
    try:
        result = await run_build(run.workspace, deps.build, run.emit, run.gate)
    except BuildFailed as exc:
        raise RunFailed(exc.code, exc.message) from None
    return Completion(finish_reason, finalize=functools.partial(_publish_build, run, deps.checkpoints, result))


async def _publish_build(run: Run, checkpoints: Checkpoints, result: BuildResult) -> Published:
    if result.out_dir is not None:
        await asyncio.to_thread(publish_build, run.workspace, result.out_dir)
    built = await asyncio.to_thread((run.workspace / "dist" / "index.html").is_file)
    checkpoint = await _checkpoint_after(run, checkpoints)
    return Published((), preview_url(run.code_app_id) if built else None, checkpoint)


# -- 3, 5. html / multi_file -------------------------------------------------------------


async def _static_site(run: Run, deps: CodegenDeps, history: History, preset: Preset | None) -> Completion:
    prompt = with_instruction(run.message, preset) + await asyncio.to_thread(_current_files, run)
    messages = initial_messages(run.code_gen_type, history, prompt)
    blocks = BlockEvents(run)
    run.gate.check()
    run.stats.steps = 1
    await stream_step(run, deps.llm, messages, (), blocks.feed)
    blocks.close()
    files = files_from_blocks(blocks.parser.blocks, run.code_gen_type)
    return Completion("stop", finalize=functools.partial(_publish_files, run, deps.checkpoints, files))


class BlockEvents:
    """Feeds the streamed answer to the fence parser and emits a code_block event per change."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.parser = FenceParser()
        self._files_taken: set[str] = set()
        self._file_of_block: dict[int, str | None] = {}

    def feed(self, text: str) -> None:
        for event in self.parser.feed(text):
            self._emit(event)

    def close(self) -> None:
        for event in self.parser.close():
            self._emit(event)

    def _emit(self, event: BlockOpened | BlockClosed) -> None:
        if isinstance(event, BlockOpened):
            file = self._claim_file(event.lang)
            self._file_of_block[event.index] = file
            self.run.emit(CodeBlock(event.lang, file, "open"))
        else:
            file = self._file_of_block.get(event.index)
            status = "closed" if event.terminated else "unterminated"  # unterminated: never written
            self.run.emit(CodeBlock(event.lang, file, status, len(event.content)))

    def _claim_file(self, lang: str) -> str | None:
        """The first block of each language becomes its file (html only for the html type)."""
        file = FILE_FOR_LANG.get(lang)
        if file is None or file in self._files_taken:
            return None
        if self.run.code_gen_type == CodeGenType.HTML and lang != "html":
            return None
        self._files_taken.add(file)
        return file


def _current_files(run: Run) -> str:
    """The app's current files, for the model to change (this run's prompt only)."""
    names = ["index.html"] if run.code_gen_type == CodeGenType.HTML else list(FILE_FOR_LANG.values())
    lang_of = {file: lang for lang, file in FILE_FOR_LANG.items()}
    parts: list[str] = []
    for name in names:
        try:
            text = fs.read_text(run.workspace, name)
        except (fs.WorkspaceError, OSError):
            continue
        if len(text) <= MAX_CONTEXT_FILE_CHARS:
            parts.append(f"{name}:\n```{lang_of[name]}\n{text}\n```")
    if not parts:
        return ""
    return "\n\nThe app's current files:\n\n" + "\n\n".join(parts)


async def _publish_files(run: Run, checkpoints: Checkpoints, files: dict[str, str]) -> Published:
    for name, content in files.items():
        await asyncio.to_thread(fs.write_text_atomic, run.workspace, name, content, run.gate)
    has_page = await asyncio.to_thread((run.workspace / "index.html").is_file)
    checkpoint = await _checkpoint_after(run, checkpoints)
    return Published(tuple(files), preview_url(run.code_app_id) if has_page else None, checkpoint)


# -- shared ------------------------------------------------------------------------------


async def _checkpoint_after(run: Run, checkpoints: Checkpoints) -> str | None:
    try:
        checkpoint = await asyncio.to_thread(checkpoints.commit_run, run.code_app_id, run.workspace, run.id)
    except CheckpointError:
        log.exception("could not checkpoint the workspace after run %s", run.id)
        return None
    return checkpoint.sha


def preview_url(app_id: str) -> str:
    return f"/apps/{app_id}/preview/"
