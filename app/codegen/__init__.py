"""Code generation: which kind of app a prompt asks for, and the files a fenced answer produces."""

from app.codegen.fences import (
    FILE_FOR_LANG,
    BlockClosed,
    BlockOpened,
    FenceEvent,
    FenceParser,
    files_from_answer,
    files_from_blocks,
    normalise_lang,
)
from app.codegen.types import CodeGenType, TypeChoice, infer_code_gen_type

__all__ = [
    "FILE_FOR_LANG",
    "BlockClosed",
    "BlockOpened",
    "CodeGenType",
    "FenceEvent",
    "FenceParser",
    "TypeChoice",
    "files_from_answer",
    "files_from_blocks",
    "infer_code_gen_type",
    "normalise_lang",
]
