"""Cost of logging one event: ``EventLog.append`` with its encoding, in process.

Every event of every run goes through it once (followers send the bytes it made), so this is
the per-event floor of the hot path. Command (from the repository, or a worktree of another
commit to compare): ``.venv/bin/python bench/event_log_append.py``.
"""

from __future__ import annotations

import inspect
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's app, whatever else is installed

from app.control.event_log import EventLog
from app.control.events import RunEvent, TextDelta, UpstreamChunk

EVENTS = 20_000
REPEATS = 15
FRAME = b'data: {"id":"x","choices":[{"delta":{"content":"hello "}}]}\n\n'


def new_log() -> EventLog:
    if "encode" not in inspect.signature(EventLog).parameters:  # before the encoder was handed in
        return EventLog("run-abcdef")  # type: ignore[call-arg,unused-ignore]
    from app.wire.sse import encode_event

    return EventLog("run-abcdef", encode_event)


def appending(event: RunEvent) -> Callable[[], None]:
    def run() -> None:
        log = new_log()
        for _ in range(EVENTS):
            log.append(event)

    return run


def main() -> None:
    for name, event in (("chunk", UpstreamChunk("hello ", FRAME)), ("text", TextDelta("hello "))):
        best = min(timeit.repeat(appending(event), number=1, repeat=REPEATS))
        print(f"{name}: {best / EVENTS * 1e6:.3f} µs an event (best of {REPEATS} × {EVENTS:,})")


if __name__ == "__main__":
    main()
