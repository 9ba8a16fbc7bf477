"""Logging of a Runforge process: the CLI's, and each worker process's of `serve --workers N`."""

from __future__ import annotations

import logging
import re

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # HTTP clients log every request at INFO: one line per upstream call, and noise in `run`.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


class RedactSecrets(logging.Filter):
    """Keep login tokens and prompts out of the access log (`/?token=…`, `gen/code?message=…`)."""

    _pattern = re.compile(r"([?&](?:token|message)=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._pattern.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        return True
