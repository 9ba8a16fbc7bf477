"""``python -m app.simulator``: the simulator in the foreground, for benchmarks and manual use."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

import uvicorn

from app.simulator.asgi import create_simulator_app
from app.simulator.config import SimulatorConfig
from app.simulator.recorder import DEFAULT_MAX_RECORDS, Recorder
from app.simulator.scenarios import SCENARIOS
from app.simulator.server import bind_socket, uvicorn_config


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    config = SimulatorConfig(pace_ms=args.pace_ms, default_scenario=args.default_scenario)
    sock = bind_socket(args.host, args.port)
    app = create_simulator_app(config, Recorder(max_records=args.max_records))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"LLM simulator listening on http://{host}:{sock.getsockname()[1]}/v1", flush=True)
    # uvicorn re-raises the captured SIGINT after its graceful shutdown: Ctrl+C is a clean exit.
    with contextlib.closing(sock), contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(uvicorn_config(app, embedded=False)).run(sockets=[sock])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.simulator", description="Run the Runforge LLM simulator in the foreground."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--pace-ms", type=float, default=SimulatorConfig.pace_ms)
    parser.add_argument("--default-scenario", default=SimulatorConfig.default_scenario, choices=list(SCENARIOS))
    parser.add_argument(
        "--max-records", type=int, default=DEFAULT_MAX_RECORDS, help="requests kept for GET /_sim/requests"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
