"""Preview links: an app's site at /preview/<appId>/<key>/, served without the sign-in cookie.

The chat page shows generated sites in a sandboxed iframe with an opaque origin, so that their
scripts can never act as the signed-in user on the API's origin. An opaque origin carries no
cookies, so the site's own files (style.css, assets/*.js) are fetched by a capability instead:
the key is an HMAC of the app id under a secret kept in the data directory. The link is given
only to the app's owner; holding it lets one read that app's preview and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "preview-key"
_KEY_HEX_CHARS = 32  # 128 bits of the HMAC: unguessable, and short enough for a URL


class PreviewLinks:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def load(cls, data_dir: Path) -> PreviewLinks:
        """The data directory's secret, created on first use (mode 600)."""
        path = data_dir / KEY_FILE
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        # Written whole under a temporary name, then linked into place: link() fails if the key
        # exists, so of several workers starting together one key wins, and no worker can read
        # a key file another has created but not yet written.
        temp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret.hex() + "\n")
        try:
            os.link(temp, path)
        except FileExistsError:  # another process created it first: use theirs
            return cls(bytes.fromhex(path.read_text().strip()))
        finally:
            temp.unlink()
        return cls(secret)

    def key(self, app_id: str) -> str:
        return hmac.new(self._secret, app_id.encode(), hashlib.sha256).hexdigest()[:_KEY_HEX_CHARS]

    def url(self, app_id: str) -> str:
        return f"/preview/{app_id}/{self.key(app_id)}/"

    def valid(self, app_id: str, key: str) -> bool:
        return hmac.compare_digest(self.key(app_id), key)
