"""Starting runs (SSE) and stopping them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from sse_starlette import EventSourceResponse

from app.api.deps import CurrentUser, ServicesDep, check_run_id, check_run_owner, owned_app, without_nul
from app.api.openapi import (
    APP_ERRORS,
    MAX_MESSAGE_CHARS,
    NOT_BLANK,
    RUN_ID,
    SSE,
    RunIdPath,
    documented,
    error_responses,
    optional_string,
    response,
)
from app.api.sse import event_stream
from app.api.stopping import RemoteStop, stop_elsewhere
from app.control.cancel import StopMode, StopReason
from app.control.manager import Multitask, RunRequest
from app.control.run import RUN_ID_PATTERN, CancelOutcome, OnDisconnect, Run
from app.errors import BadRequest, PayloadTooLarge
from app.services import Services
from app.store.models import User

# How long a rollback stop sent to another worker waits for the restore before answering.
ROLLBACK_WAIT_S = 30.0


# What the handlers refuse with their own codes (empty_message, message_too_large, invalid_run_id).
MESSAGE_SCHEMA = documented(pattern=NOT_BLANK, maxLength=MAX_MESSAGE_CHARS)
RUN_ID_SCHEMA = documented(pattern=RUN_ID)
# Starting a run: besides the app's errors, a run already active (409), a long message (413), a
# limit (429), a database that cannot record it (503).
START_ERRORS = {**APP_ERRORS, **error_responses(409, 413, 429, 503)}
STOP_RESPONSES = {
    200: response("The run has ended: its final status (a rollback stop answers once the files are back)"),
    **error_responses(400, 401, 403, 429),
}


class GenRequest(msgspec.Struct):
    appId: str
    message: Annotated[str, MESSAGE_SCHEMA]
    runId: Annotated[str | None, RUN_ID_SCHEMA] = None
    onDisconnect: OnDisconnect = OnDisconnect.CANCEL
    multitask: Multitask = Multitask.INTERRUPT


class StopRequest(msgspec.Struct):
    runId: Annotated[str, RUN_ID_SCHEMA]
    mode: StopMode = StopMode.IMMEDIATE


class ChatController(Controller):
    @get("/app/chat/gen/code", media_type=SSE, responses=START_ERRORS)
    async def gen_code_get(
        self,
        request: Request[Any, Any, Any],
        services: ServicesDep,
        user: CurrentUser,
        app_id: Annotated[str, QueryParameter(name="appId")],
        message: Annotated[str, QueryParameter(schema_extra=MESSAGE_SCHEMA.schema_extra)],
        run_id: Annotated[
            str | None, QueryParameter(name="runId", schema_extra=optional_string(pattern=RUN_ID))
        ] = None,
        on_disconnect: Annotated[OnDisconnect, QueryParameter(name="onDisconnect")] = OnDisconnect.CANCEL,
        multitask: FromQuery[Multitask] = Multitask.INTERRUPT,
    ) -> EventSourceResponse:
        gen = GenRequest(app_id, message, run_id, on_disconnect, multitask)
        return await start_run(request, services, user, gen)

    @post("/app/chat/gen/code", status_code=HTTP_200_OK, media_type=SSE, responses=START_ERRORS)
    async def gen_code_post(
        self, request: Request[Any, Any, Any], data: JSONBody[GenRequest], services: ServicesDep, user: CurrentUser
    ) -> EventSourceResponse:
        return await start_run(request, services, user, data)

    @post(["/app/chat/stop", "/chat/stop"], status_code=HTTP_202_ACCEPTED, responses=STOP_RESPONSES)
    async def stop(
        self, data: JSONBody[StopRequest], services: ServicesDep, user: CurrentUser
    ) -> Response[dict[str, Any]]:
        return await stop_run(services, user, data.runId, data.mode)

    @post("/runs/{run_id:str}/stop", status_code=HTTP_202_ACCEPTED, responses=STOP_RESPONSES)
    async def stop_by_path(
        self,
        run_id: RunIdPath,
        services: ServicesDep,
        user: CurrentUser,
        mode: FromQuery[StopMode] = StopMode.IMMEDIATE,
    ) -> Response[dict[str, Any]]:
        return await stop_run(services, user, run_id, mode)


async def start_run(
    request: Request[Any, Any, Any], services: Services, user: User, gen: GenRequest
) -> EventSourceResponse:
    run_id = check_run_id(gen.runId) if gen.runId else _run_id_from(request)
    run = await start_code_run(services, user, gen, run_id)
    return event_stream(services, run, 0, gen.onDisconnect)


async def start_code_run(services: Services, user: User, gen: GenRequest, run_id: str) -> Run:
    """Validate a generation request and start its run (shared by SSE and the WebSocket)."""
    services.limits.take_start(user.id)
    message = without_nul(gen.message).strip()
    if not message:
        raise BadRequest("message must not be empty", code="empty_message")
    if len(message) > services.settings.max_message_chars:
        raise PayloadTooLarge(
            f"message is longer than {services.settings.max_message_chars} characters",
            code="message_too_large",
        )
    app = await owned_app(services, user, gen.appId)
    return await services.manager.start(
        RunRequest(
            run_id=run_id,
            app_id=gen.appId,
            user_id=user.id,
            message=message,
            workspace=services.workspace(gen.appId),
            code_gen_type=app.code_gen_type,
            on_disconnect=gen.onDisconnect,
            multitask=gen.multitask,
        )
    )


def _run_id_from(request: Request[Any, Any, Any]) -> str:
    """X-Request-Id becomes the run id when it is a valid one; else a fresh id."""
    request_id = request.headers.get("x-request-id", "")
    return request_id if RUN_ID_PATTERN.fullmatch(request_id) else uuid.uuid4().hex


async def stop_run(
    services: Services, user: User, run_id: str, mode: StopMode = StopMode.IMMEDIATE
) -> Response[dict[str, Any]]:
    """202 while the stop takes effect (``pending`` for a run not started yet); 200 with the final
    status once there is one. A rollback stop answers after the restore, so the client knows its
    files are back.
    """
    check_run_id(run_id)  # a remembered stop is small: ids are at most 64 characters
    services.limits.take_stop(user.id)
    run = services.manager.get(run_id)
    if run is None:
        # Remembered before any await: a start that is on its way takes it (pending_stops.py).
        services.manager.remember_stop(user.id, run_id, mode)
        return await _stop_recorded(services, user, run_id, mode)
    return await _stop_live(run, user, mode)


async def _stop_live(run: Run, user: User, mode: StopMode) -> Response[dict[str, Any]]:
    check_run_owner(run.user_id, user, run.id)
    outcome = run.cancel(StopReason.USER_STOP, mode)
    accepted = {"runId": run.id, "status": "stopping", "mode": run.stop_mode.value}
    if outcome is CancelOutcome.DEFERRED or (outcome is CancelOutcome.STOPPING and mode is not StopMode.ROLLBACK):
        return Response(accepted, status_code=HTTP_202_ACCEPTED)
    # Stopped already, completing, or rolling back: the final status follows within milliseconds.
    await run.wait_finished()
    final = {"runId": run.id, "status": run.status.value, "mode": run.stop_mode.value, "rolledBack": run.rolled_back}
    return Response(final, status_code=HTTP_200_OK)


async def _stop_recorded(services: Services, user: User, run_id: str, mode: StopMode) -> Response[dict[str, Any]]:
    """A run not in this worker's memory: another worker's (stopped through it), finished, or not
    started yet (the stop is remembered for it)."""
    remote = await stop_elsewhere(services, user, run_id, StopReason.USER_STOP, mode)
    if remote is not None:
        services.manager.forget_stop(user.id, run_id)
        return await _stopped_remotely(services, run_id, mode, remote)
    row = await services.runs.get(run_id)
    run = services.manager.get(run_id)
    if run is not None:  # started here during those awaits: it took the remembered stop
        return await _stop_live(run, user, mode)
    if row is None:
        return Response({"runId": run_id, "status": "pending", "mode": mode.value}, status_code=HTTP_202_ACCEPTED)
    services.manager.forget_stop(user.id, run_id)  # the id is taken: no start can use it
    check_run_owner(row.user_id, user, run_id)
    return Response({"runId": run_id, "status": row.status}, status_code=HTTP_200_OK)


async def _stopped_remotely(
    services: Services, run_id: str, mode: StopMode, remote: RemoteStop
) -> Response[dict[str, Any]]:
    if remote.stopping and mode is not StopMode.ROLLBACK:
        return Response({"runId": run_id, "status": "stopping", "mode": remote.mode}, status_code=HTTP_202_ACCEPTED)
    # As on the owner: stopped already, completing, or rolling back: answer with the final status.
    assert services.cluster is not None
    await services.cluster.wait_ended(run_id, ROLLBACK_WAIT_S)
    row = await services.runs.get(run_id)
    status = row.status if row else remote.status
    rolled_back = bool(row and row.rolled_back)
    final = {"runId": run_id, "status": status, "mode": remote.mode, "rolledBack": rolled_back}
    return Response(final, status_code=HTTP_200_OK)
