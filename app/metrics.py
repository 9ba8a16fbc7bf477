"""This process's metrics, served by ``GET /metrics`` in Prometheus' text format (version 0.0.4).

Hand-written rather than ``prometheus_client``: a handful of counters and two histograms, one
registry per server (the tests run many servers in one process, and each must count its own).
Labels only take values from fixed sets (statuses, stop reasons, error codes), never run, app or
user ids, so the number of series stays bounded. With several workers each process counts its
own runs: ``runforge_worker_info`` names the worker that answered the scrape (docs/deploy.md).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence

# Seconds. A stop is meant to take milliseconds; the upper buckets show when it does not.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0.0)

    def render(self) -> Iterable[str]:
        yield from _header(self.name, self.help, "counter")
        for values, total in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labels, values)} {_number(total)}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self._counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self._counts):
            self._counts[index] += 1
        self.count += 1
        self.sum += value

    def render(self) -> Iterable[str]:
        yield from _header(self.name, self.help, "histogram")
        cumulative = 0
        for bound, count in zip(self.buckets, self._counts, strict=True):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_number(self.sum)}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    """What the runs of this process did. Gauges (runs active now) are read at scrape time."""

    def __init__(self) -> None:
        self.runs_started = Counter("runforge_runs_started_total", "Runs started.", ("kind",))
        self.runs_finished = Counter(
            "runforge_runs_finished_total",
            "Runs ended, by terminal status and reason (stop reason, or error code of a failed run).",
            ("kind", "status", "reason"),
        )
        self.tool_calls = Counter(
            "runforge_tool_calls_total",
            "Tool calls the model asked for: executed, or skipped because the run stopped first.",
            ("outcome",),
        )
        self.upstream_errors = Counter(
            "runforge_upstream_errors_total", "Runs failed by the LLM provider, by error code.", ("code",)
        )
        self.stop_to_interrupted = Histogram(
            "runforge_stop_to_interrupted_seconds",
            "From a stop accepted by the run's worker to its `interrupted` event handed to a client's stream.",
        )
        self.stop_to_upstream_closed = Histogram(
            "runforge_stop_to_upstream_closed_seconds",
            "From a stop accepted by the run's worker to its upstream LLM connection closed.",
        )

    def observe_since(self, histogram: Histogram, since_mono: float | None) -> None:
        if since_mono is not None:
            histogram.observe(max(0.0, time.monotonic() - since_mono))

    def render(self, gauges: Sequence[tuple[str, str, float]], info: dict[str, str]) -> str:
        """The exposition text: ``gauges`` are (name, help, value) read now; ``info`` labels one
        ``runforge_worker_info`` sample."""
        lines = [*_header("runforge_worker_info", "The process that answered.", "gauge")]
        lines.append(f"runforge_worker_info{_labels(tuple(info), tuple(info.values()))} 1")
        for name, help_text, value in gauges:
            lines += [*_header(name, help_text, "gauge"), f"{name} {_number(value)}"]
        for metric in (self.runs_started, self.runs_finished, self.tool_calls, self.upstream_errors):
            lines += metric.render()
        for histogram in (self.stop_to_interrupted, self.stop_to_upstream_closed):
            lines += histogram.render()
        return "\n".join(lines) + "\n"


def _header(name: str, help_text: str, kind: str) -> Iterable[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))
