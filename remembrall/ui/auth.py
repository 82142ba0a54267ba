"""Who may change state through the UI: a token made at start-up, a same-origin check, a size limit.

Reading (pages, live view, charts) needs nothing on a loopback bind. Anything that changes
state — a label, a rollback, a control verb — is a POST that must carry the token, either as
``Authorization: Bearer TOKEN`` (scripts) or as the cookie a browser gets by opening the URL the
supervisor prints once (``/?token=TOKEN``; HttpOnly, SameSite=Strict). A POST whose ``Origin``
or ``Sec-Fetch-Site`` says it came from another site is refused even with the cookie (CSRF).
The token is written to ``OUT/ui-token`` with mode 0600, so only the pipeline's user can read it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from remembrall.atomic import atomic_write_bytes

TOKEN_FILE = "ui-token"
COOKIE = "remembrall_token"


class Refused(Exception):
    """A request refused with an HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def make_token(out_dir: str | os.PathLike[str]) -> str:
    """A fresh token, stored in ``OUT/ui-token`` (mode 0600, written atomically)."""
    token = secrets.token_urlsafe(24)
    path = Path(out_dir) / TOKEN_FILE
    atomic_write_bytes(path, (token + "\n").encode(), mode=0o600)
    return token


def check_token(expected: str, authorization: str | None, cookie: str | None) -> None:
    """Raise :class:`Refused` 401 when no token came, 403 when a wrong one did."""
    given = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Refused(401, "the Authorization header must be 'Bearer TOKEN' (the token is in OUT/ui-token)")
        given = value.strip()
    elif cookie:
        given = cookie
    if given is None:
        raise Refused(401, "this action needs the UI token: open the URL the pipeline printed at start-up, "
                           "or send 'Authorization: Bearer TOKEN' (the token is in OUT/ui-token)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(403, "wrong UI token (the current one is in OUT/ui-token; it changes at every start)")


def check_same_origin(host: str | None, origin: str | None, fetch_site: str | None) -> None:
    """Refuse a browser request sent from another site (a script can send neither header)."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Refused(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    if origin is not None and origin != "null":
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or rest != (host or ""):
            raise Refused(403, f"cross-origin request refused (Origin {origin!r} is not this UI's {host!r})")
    elif origin == "null":
        raise Refused(403, "request from an opaque origin refused")
