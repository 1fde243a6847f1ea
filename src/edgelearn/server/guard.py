"""Who may do what, decided from the request line and headers alone, before any byte of the body is
read: the ``Host`` header (DNS rebinding), the Bearer token the route needs, and security headers on
every response. Plain ASGI: Starlette's BaseHTTPMiddleware would cost every request milliseconds."""

import ipaddress
import re
import secrets
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from edgelearn.errors import EdgelearnError

MIN_TOKEN_CHARS = 16
READ, WRITE = "read", "write"
USER_LINE = re.compile(r"([^\s:]+)\s*(?::\s*|\s)(\S+)")  # name token | name: token
# never public, whatever the bind address: who taught what, the images (the fixed camera's too), the whole knowledge
SENSITIVE_READS = re.compile(r"/api/(events|knowledge|thumbnails/[^/]+|queue/[^/]+/image|camera/frame)")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc load Swagger UI / ReDoc from a CDN with an inline start-up script
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src https://fonts.gstatic.com; img-src 'self' data: https:; worker-src blob:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"x-content-type-options", b"nosniff")]


@dataclass(frozen=True)
class Tokens:
    """The station's write token, an optional read-only token, and optional per-user write tokens."""

    write: str
    read: str | None = None
    users: dict[str, str] = field(default_factory=dict)  # name -> token

    def who(self, token: str | None) -> tuple[str | None, str | None]:
        """``(access, user)`` for a presented token: access is ``"write"``, ``"read"`` or None; user is
        the name from ``--users`` whose token it is (None for the station's own tokens)."""
        if not token:
            return None, None
        given = token.encode()
        for name, user_token in self.users.items():
            if secrets.compare_digest(given, user_token.encode()):
                return WRITE, name
        if secrets.compare_digest(given, self.write.encode()):
            return WRITE, None
        if self.read and secrets.compare_digest(given, self.read.encode()):
            return READ, None
        return None, None


def bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def needed_access(method: str, path: str, reads_need_token: bool) -> str | None:
    """What a request needs: ``"write"``, ``"read"`` (read or write token) or None (public)."""
    if not path.startswith("/api/"):
        return None  # the page, /static and the API docs: they hold no data
    if method not in ("GET", "HEAD") and path != "/api/predict":
        return WRITE
    if reads_need_token or SENSITIVE_READS.fullmatch(path):
        return READ
    return None


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the station on this machine (all of 127.0.0.0/8 and ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_names(host: str = "127.0.0.1", extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The host names a browser may use to reach this station (checked against ``Host``)."""
    hostname = socket.gethostname()
    names = {"localhost", "127.0.0.1", "::1", hostname, hostname.split(".")[0], host, *extra}
    return {_host_name(n) for n in names if n}


def _host_name(value: str) -> str:
    """``Name:8000`` -> ``name``; ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def host_allowed(host_header: str, names: set[str]) -> bool:
    """A served name, or any IP address: a DNS-rebinding page reaches us under its own name, never
    an address, so an address in ``Host`` is always a client that dialled it on purpose."""
    host = _host_name(host_header)
    if host in names:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Guard:
    """Refuses unknown ``Host`` names (400) and requests without the token their route needs (401,
    ``WWW-Authenticate: Bearer``; a read-only token on a write: 403) before the body is read, and adds
    the security headers (CSP, X-Frame-Options, Referrer-Policy, nosniff) to every response."""

    def __init__(self, app, tokens: Tokens, hosts: set[str], reads_need_token: bool):
        self.app, self.tokens, self.hosts, self.reads_need_token = app, tokens, hosts, reads_need_token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._with_headers(send, scope["path"])
        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host", ""), self.hosts):
            name = _host_name(headers.get("host", "")) or "(none)"
            return JSONResponse({"detail": f"this station does not answer to the name {name!r}; if it is its "
                                           f"name, start it with --allowed-host {name}"}, 400)
        needed = needed_access(scope["method"], scope["path"], self.reads_need_token)
        if needed is None:
            return None
        access, _ = self.tokens.who(bearer(headers))
        if access == WRITE or access == needed:
            return None
        if access == READ:
            return JSONResponse({"detail": "this token can only look: teaching and changes need the station's "
                                           "token"}, 403)
        what = "this needs the station's token" if needed == WRITE else \
            "reading this needs the station's read or write token"
        return JSONResponse({"detail": what}, 401,  # WWW-Authenticate tells API clients how
                            headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _with_headers(send, path: str):
        csp = DOCS_CSP if path in ("/docs", "/redoc") else PAGE_CSP

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(b"content-security-policy", csp.encode()), *SECURITY_HEADERS]
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in extra if k not in present]]}
            await send(message)

        return send_with_headers


def check_token(token: str, what: str = "the station's token") -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise EdgelearnError(f"{what} is too short ({len(token)} characters; at least {MIN_TOKEN_CHARS}): "
                             "anyone could guess it")
    return token


def read_private(path: Path) -> str:
    """A secret file's text, refused if other users of the machine can read it."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EdgelearnError(f"{path} can be read by other users of this machine; make it private "
                             f"(chmod 600 {path})")
    return path.read_text()


def load_users(path: Path) -> dict[str, str]:
    """``--users FILE``: one ``name token`` or ``name: token`` per line (``#`` comments); name -> token."""
    users: dict[str, str] = {}
    for number, line in enumerate(read_private(Path(path)).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = USER_LINE.fullmatch(line)
        if match is None:
            raise EdgelearnError(f"{path} line {number}: expected 'name token' or 'name: token'")
        name, token = match.groups()
        if name in users:
            raise EdgelearnError(f"{path} line {number}: {name} is listed twice")
        if token in users.values():
            raise EdgelearnError(f"{path} line {number}: {name} has the same token as another user")
        users[name] = check_token(token, f"{path} line {number}: {name}'s token")
    if not users:
        raise EdgelearnError(f"{path} names no users (one 'name token' per line)")
    return users
