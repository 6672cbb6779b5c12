"""Who may use the web server: loopback without a token; any other address only with one."""

from __future__ import annotations

import hmac
import ipaddress
import re
from http.cookies import SimpleCookie
from pathlib import Path

from streamcap.errors import BadInputError

COOKIE = "streamcap_token"
_TOKEN_RE = re.compile(r"(token=)[^&\s]*")


def parse_bind(value: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); host 127.0.0.1 when left out ("[::1]:8080" for IPv6)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInputError(f"--serve wants [HOST:]PORT with a port 0-65535, got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None, token_file: Path | None) -> str | None:
    """The token every request must carry, or None (loopback without one). Refuses to serve
    any other address without a token."""
    if token and token_file:
        raise BadInputError("give --auth-token or --auth-token-file, not both")
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise BadInputError(f"cannot read --auth-token-file {token_file}: {getattr(err, 'strerror', None) or err}") from None
        if not token:
            raise BadInputError(f"--auth-token-file {token_file} is empty")
    if token is not None and len(token) < 8:
        raise BadInputError("the auth token must be at least 8 characters")
    if not token and not is_loopback(host):
        raise BadInputError(f"serving on {host} (not loopback) needs --auth-token or --auth-token-file")
    return token or None


def token_ok(expected: str | None, authorization: str | None, cookie_header: str | None,
             query_token: str | None = None) -> bool:
    if expected is None:
        return True
    given = []
    if authorization and authorization.startswith("Bearer "):
        given.append(authorization[7:].strip())
    if cookie_header:
        cookie = SimpleCookie()
        try:
            cookie.load(cookie_header)
        except Exception:  # a malformed cookie header is no token
            cookie = {}
        if COOKIE in cookie:
            given.append(cookie[COOKIE].value)
    if query_token:
        given.append(query_token)
    return any(hmac.compare_digest(g.encode(), expected.encode()) for g in given)


def redact_token(text: str) -> str:
    """A request line or URL with any ``token=`` value replaced, for logs."""
    return _TOKEN_RE.sub(r"\1***", text)


SECRET_OPTIONS = ("--auth-token",)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret options (``--auth-token X``,
    ``--auth-token=X``) replaced by ``***``, for the log's ``run`` record."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg in SECRET_OPTIONS:
            out.append(arg)
            hide = True
        elif arg.split("=", 1)[0] in SECRET_OPTIONS and "=" in arg:
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out
