"""Run control: starting and stopping runs, for every transport.

A transport (SSE routes, /v1, the WebSocket, and the adapters to come) parses its request, calls
``RunControl``, and maps what it returns to its own shape: a stop's ``StopResult`` becomes 202/200
JSON, OpenAI's answer or an ``INTERRUPT_ACK``. Limits, lookup, ownership, the local cancel, the
cross-worker path and the final row are decided here, once.
"""

from app.runs.control import RunControl
from app.runs.results import CodeRunSpec, RemoteStop, StopPeers, StopResult, StopState

__all__ = ["CodeRunSpec", "RemoteStop", "RunControl", "StopPeers", "StopResult", "StopState"]
