"""Run status, and joining a run's event stream (live or replayed)."""

from __future__ import annotations

from typing import Annotated, Any, cast

from litestar import Controller, get
from litestar.params import HeaderParameter, QueryParameter
from litestar.types import ASGIApp
from starlette.responses import Response as PlainResponse

from app.api.deps import CurrentUser, ServicesDep
from app.api.openapi import APP_ERRORS, RUN_ID, SSE, RunIdPath, error_responses, optional_string, response
from app.api.sse import (
    event_stream,
    final_event_stream,
    parse_last_event_id,
    remote_event_stream,
)
from app.api.views import RunView, live_run_view, row_run_view
from app.control.request import OnDisconnect
from app.control.run import ACTIVE_STATUSES, Run
from app.errors import BadRequest, Conflict, NotFound
from app.runs.access import check_run_owner
from app.services import Services
from app.store.models import RunRow, User


def no_content() -> ASGIApp:
    """Nothing newer: browsers stop reconnecting an EventSource on 204.

    A new response each time: response objects carry their headers (X-Request-Id included).
    """
    return cast(ASGIApp, PlainResponse(status_code=204))


# `<runId>:<seq>`, the id of an event the client has seen (its run's id: else 400 invalid_last_event_id).
EVENT_ID_SCHEMA = optional_string(pattern=f"{RUN_ID.removesuffix('$')}:[0-9]{{1,18}}$")


class RunsController(Controller):
    path = "/runs"

    @get("/{run_id:str}", responses={200: response("The run's status", RunView), **APP_ERRORS})
    async def get_run(self, run_id: RunIdPath, services: ServicesDep, user: CurrentUser) -> dict[str, Any]:
        run = services.manager.get(run_id)
        if run is not None:
            check_run_owner(run.user_id, user.id, run_id)
            return live_run_view(run)
        return row_run_view(await _owned_row(services, user, run_id))

    @get(
        "/{run_id:str}/events",
        media_type=SSE,
        responses={
            204: response("Nothing newer: the run has ended and the client has seen its last event", None),
            **APP_ERRORS,
            **error_responses(409),
        },
    )
    async def events(
        self,
        run_id: RunIdPath,
        services: ServicesDep,
        user: CurrentUser,
        last_event_id: Annotated[
            str | None, HeaderParameter(name="Last-Event-ID", schema_extra=EVENT_ID_SCHEMA)
        ] = None,
        last_event_id_query: Annotated[
            str | None, QueryParameter(name="lastEventId", schema_extra=EVENT_ID_SCHEMA)
        ] = None,
        on_disconnect: Annotated[OnDisconnect, QueryParameter(name="onDisconnect")] = OnDisconnect.CONTINUE,
    ) -> ASGIApp:
        # A page rejoining with a new EventSource cannot set the header: it passes the query.
        # The browser's own reconnects of that EventSource then send the newer header.
        after = parse_last_event_id(last_event_id or last_event_id_query, run_id)
        run = services.manager.get(run_id)
        if run is None:
            row = await _owned_row(services, user, run_id)
            # Made here during that read (its start inserts the row once the run exists): it is live
            # here, not "active somewhere else" (found by the model-based test: 409 run_not_here).
            run = services.manager.get(run_id)
            if run is None:
                return await _join_recorded(services, row, after, on_disconnect)
        check_run_owner(run.user_id, user.id, run_id)
        return _join_live(services, run, after, on_disconnect)


def _join_live(services: Services, run: Run, after: int, on_disconnect: OnDisconnect) -> ASGIApp:
    if run.log.closed and after >= run.log.last_seq:
        return no_content()
    if after > run.log.last_seq:
        raise BadRequest(
            f"Last-Event-ID is ahead of the run: its last event is {run.id}:{run.log.last_seq}",
            code="invalid_last_event_id",
        )
    return cast(ASGIApp, event_stream(services, run, after, on_disconnect))


async def _join_recorded(services: Services, row: RunRow, after: int, on_disconnect: OnDisconnect) -> ASGIApp:
    """A run not in this worker's memory: another worker's (its Redis Stream), or a finished one."""
    active = row.status in ACTIVE_STATUSES
    if not active and after >= row.last_seq:
        return no_content()
    cluster = services.cluster
    if cluster is not None and (active or await cluster.streams.exists(row.id)):
        return cast(ASGIApp, remote_event_stream(services, row, after, on_disconnect))
    if active:
        raise Conflict(f"run {row.id} is not active in this server", code="run_not_here")
    return cast(ASGIApp, final_event_stream(services, row))


async def _owned_row(services: Services, user: User, run_id: str) -> RunRow:
    row = await services.runs.get(run_id)
    if row is None:
        raise NotFound(f"no run {run_id!r}", code="run_not_found")
    check_run_owner(row.user_id, user.id, run_id)
    return row
