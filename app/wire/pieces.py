"""Bounded writes: what a stream hands its connection at once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["PIECE_BYTES", "pieces"]

# A stream writes at most this much at once (a single larger frame goes alone): a reader that
# stops reading holds one piece beyond its socket's buffers, however far behind the run it is.
PIECE_BYTES = 64 * 1024


def pieces(frames: Iterable[bytes], limit: int = PIECE_BYTES) -> Iterator[bytes]:
    """``frames`` joined into pieces of at most ``limit`` bytes, in order; empty frames dropped."""
    piece: list[bytes] = []
    size = 0
    for frame in frames:
        if size and size + len(frame) > limit:
            yield b"".join(piece)
            piece, size = [], 0
        if frame:
            piece.append(frame)
            size += len(frame)
    if size:
        yield b"".join(piece)
