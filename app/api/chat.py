"""Starting runs (SSE) and stopping them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from sse_starlette import EventSourceResponse

from app.api.deps import CurrentUser, ServicesDep, check_run_id
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
from app.control.cancel import StopMode
from app.control.request import Multitask, OnDisconnect
from app.control.run import RUN_ID_PATTERN
from app.runs import CodeRunSpec, StopState
from app.services import Services
from app.store.models import User

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
    spec = CodeRunSpec(gen.appId, gen.message, gen.onDisconnect, gen.multitask)
    run = await services.control.start_code(user.id, spec, run_id)
    return event_stream(services, run, 0, gen.onDisconnect)


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
    result = await services.control.stop(user.id, run_id, mode, settle=True)
    if result.state is not StopState.ENDED:
        body = {"runId": run_id, "status": result.state.value, "mode": result.mode}
        return Response(body, status_code=HTTP_202_ACCEPTED)
    if result.mode is None:  # answered from the run's row: it had ended before
        return Response({"runId": run_id, "status": result.status}, status_code=HTTP_200_OK)
    final = {"runId": run_id, "status": result.status, "mode": result.mode, "rolledBack": result.rolled_back}
    return Response(final, status_code=HTTP_200_OK)
