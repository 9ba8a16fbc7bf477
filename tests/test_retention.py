"""Finished runs kept for rejoins: bounded by time, by each run's bytes and by all runs' bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import httpx

from app.control.retention import RetainedRuns, RetentionLimits
from app.control.run import Run
from app.settings import Settings
from tests.support import ServerThread, collect, gen_url, open_stream


@dataclass
class Log:
    size_bytes: int
    first_held_seq: int = 1


@dataclass
class FinishedRun:
    id: str
    size: int
    app_id: str | None = "app"
    log: Log = field(init=False)

    def __post_init__(self) -> None:
        self.log = Log(self.size)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def retained(ttl_s: float = 600.0, run_bytes: int = 100, total_bytes: int = 250) -> tuple[RetainedRuns, Clock]:
    clock = Clock()
    return RetainedRuns(RetentionLimits(ttl_s, run_bytes, total_bytes), clock), clock


def keep(runs: RetainedRuns, run_id: str, size: int, app_id: str = "app") -> Run:
    run = cast(Run, FinishedRun(run_id, size, app_id))
    runs.keep(run)
    return run


def test_a_run_over_the_per_run_cap_is_not_kept() -> None:
    runs, _ = retained(run_bytes=100)
    keep(runs, "big", 101)
    small = keep(runs, "small", 100)
    assert runs.get("big") is None
    assert runs.get("small") is small
    assert runs.size_bytes == 100


def test_all_runs_together_stay_under_the_total_cap_oldest_first() -> None:
    runs, _ = retained(total_bytes=250)
    for index in range(5):
        keep(runs, f"r{index}", 100)
    assert [run_id for run_id in ("r0", "r1", "r2", "r3", "r4") if runs.get(run_id)] == ["r3", "r4"]
    assert runs.size_bytes == 200


def test_runs_expire_after_the_ttl_even_with_room_left() -> None:
    runs, clock = retained(ttl_s=10)
    keep(runs, "old", 10)
    clock.now = 5
    keep(runs, "newer", 10)
    clock.now = 10.5
    assert (runs.get("old"), len(runs), runs.size_bytes) == (None, 1, 10)


def test_discard_is_by_identity_and_by_app() -> None:
    runs, _ = retained()
    first = keep(runs, "r1", 10, app_id="a")
    keep(runs, "r2", 10, app_id="b")
    runs.discard("r1", cast(Run, FinishedRun("r1", 10)))  # another run with that id: kept
    assert runs.get("r1") is first
    runs.discard_app("a")
    assert (runs.get("r1"), len(runs), runs.size_bytes) == (None, 1, 10)


async def test_a_run_too_big_to_keep_rejoins_from_its_row(settings: Settings) -> None:
    """Over the server: the big run's rejoin replays its terminal event from the database (with
    its real id), a small run's its whole log from memory."""
    thread = ServerThread(settings.with_overrides(max_retained_run_bytes=20_000)).start()
    try:
        token = thread.add_user("alice")
        async with httpx.AsyncClient(base_url=thread.url, headers={"Authorization": f"Bearer {token}"}) as http:
            app_id = (await http.post("/apps", json={"name": "a", "codeGenType": "html"})).json()["id"]
            for run_id, tokens in (("r-big", 2000), ("r-small", 20)):
                url = gen_url(app_id, f"essay [sim:long_text pace=0 tokens={tokens}]", runId=run_id)
                async with open_stream(http, "GET", url) as (_, events):
                    live = await collect(events)
                assert live[-1].event == "done"
                async with open_stream(http, "GET", f"/runs/{run_id}/events") as (_, events):
                    replayed = await collect(events)
                if run_id == "r-big":
                    assert [(e.event, e.seq) for e in replayed] == [("done", live[-1].seq)]
                else:
                    assert [(e.event, e.seq, e.data) for e in replayed] == [(e.event, e.seq, e.data) for e in live]
            assert thread.services.manager.retained_count == 1
            assert 0 < thread.services.manager.retained_bytes <= 20_000
    finally:
        thread.stop()
