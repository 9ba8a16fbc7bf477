"""What the agent needs of a model: a streamed completion, closed when its block exits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from app.llm.chunks import Chunk


class ChatStream(Protocol):
    """``LLMClient`` over HTTP; ``app.simulator.in_process.FunctionModel`` in unit tests."""

    def stream_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], run_id: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        """Open a streaming completion; leaving the block closes it (on a stop too)."""
        ...
