"""The request class: a JSON body the server cannot decode is the client's mistake, always a 400.

msgspec refuses a body nested deeper than it can recurse with ``RecursionError``, which is not a
decode error, so without this every JSON route answered such a body with a 500 and a traceback.
Both kinds become ``400 invalid_json`` here, in the surface's own shape (the /v1 router maps
AppError to OpenAI's).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import SerializationException

from app.errors import BadRequest

TOO_DEEP = "the request body is nested too deeply to decode"


class JsonRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise BadRequest(TOO_DEEP, code="invalid_json") from None
        except SerializationException as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
