"""The simulator's settings and the request headers it reads."""

from __future__ import annotations

from dataclasses import dataclass

RUN_ID_HEADER = "x-runforge-run-id"
# The client's own send time (Runforge stamps it: app/llm/client.py); recorded as it came.
SENT_AT_HEADER = "x-runforge-sent-at"


@dataclass(frozen=True)
class SimulatorConfig:
    pace_ms: float = 15.0
    default_scenario: str = "codegen"
    model: str = "runforge-sim"
