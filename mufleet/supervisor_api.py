"""The local supervisor's control API: lets the router restart a node's process.

``GET /nodes`` lists the nodes (name, pid, alive, restarts); ``POST /nodes/{name}/restart``
(optional body ``{"reason": "…"}``) kills the node's process and answers 200 once it has
been started again (not yet ready: waiting for readiness is the caller's part). Every
request needs ``Authorization: Bearer <token>``; the token is random per ``mufleet up`` and
sits in ``$MUFLEET_HOME/supervisor.token`` (mode 0600) for the router to read.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: the supervise loop of ``mufleet up``
stays a plain loop, and :class:`~mufleet.fleet.LocalFleet` serialises the two with its lock.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from mufleet import paths
from mufleet.fleet import NodeStatus, UnknownNodeError

log = logging.getLogger("mufleet.supervisor")

__all__ = ["FleetControl", "SupervisorServer", "token_path", "write_token"]

MAX_BODY_BYTES = 64 << 10


class FleetControl(Protocol):
    """What the API needs of the fleet (:class:`~mufleet.fleet.LocalFleet`)."""

    def status(self) -> list[NodeStatus]: ...

    def restart(self, name: str, reason: str = "") -> None: ...


def token_path() -> Path:
    """``$MUFLEET_HOME/supervisor.token``."""
    return paths.home() / "supervisor.token"


def write_token(path: Path | None = None) -> str:
    """Write a new random token to ``path`` (default :func:`token_path`), mode 0600."""
    path = path or token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that existed
    return token


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that stalls mid-request gives its thread back

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: object, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.server.token.encode()
        )

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from exc
        if length > MAX_BODY_BYTES:
            raise _ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _ApiError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _route(self, method: str) -> tuple[HTTPStatus, object]:
        parts = [unquote(p) for p in self.path.split("?", 1)[0].strip("/").split("/")]
        if parts == ["nodes"]:
            if method != "GET":
                raise _ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", {"Allow": "GET"})
            return HTTPStatus.OK, [asdict(s) for s in self.server.fleet.status()]
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "restart":
            if method != "POST":
                raise _ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "use POST", {"Allow": "POST"})
            return HTTPStatus.OK, self._restart(parts[1], self._body())
        raise _ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")

    def _restart(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise _ApiError(HTTPStatus.BAD_REQUEST, "reason must be a string")
        fleet = self.server.fleet
        try:
            fleet.restart(name, reason[:500])
        except UnknownNodeError as exc:
            raise _ApiError(HTTPStatus.NOT_FOUND, str(exc)) from exc
        node = next((s for s in fleet.status() if s.name == name), None)
        return {**(asdict(node) if node else {"name": name}), "reason": reason[:500]}

    def _handle(self, method: str) -> None:
        try:
            if not self._authorised():
                raise _ApiError(
                    HTTPStatus.UNAUTHORIZED,
                    "missing or wrong bearer token",
                    {"WWW-Authenticate": "Bearer"},
                )
            status, body = self._route(method)
            self._send(status, body, {})
        except _ApiError as exc:
            self._send(exc.status, {"error": str(exc)}, exc.headers)
        except Exception as exc:
            log.exception("control API: %s %s failed", method, self.path)
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}, {}
            )

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fleet: FleetControl, token: str) -> None:
        super().__init__(address, _Handler)
        self.fleet = fleet
        self.token = token


class SupervisorServer:
    """The control API on ``host:port`` (port 0: any free port; see :attr:`port`).

    Binding happens in the constructor, so a port in use fails there (``OSError``).
    """

    def __init__(
        self, fleet: FleetControl, token: str, *, host: str = "127.0.0.1", port: int = 9010
    ) -> None:
        if not token:
            raise ValueError("the control API needs a token")
        self._host = host
        self._server = _Server((host, port), fleet, token)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},  # how long stop() may wait
                name="supervisor-api",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (a restart under way finishes in its thread)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
