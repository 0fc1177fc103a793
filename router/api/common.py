"""What every HTTP front door shares: keys, bodies with a size bound, JSON errors."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from router.admission import TenantConfig
from router.errors import BadRequest, PayloadTooLarge, RouterError, Unauthorized


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class KeyRing:
    """Tenant API keys and the admin token, compared in constant time, never logged."""

    def __init__(self, tenants: Sequence[TenantConfig], admin_token: str) -> None:
        self._tenants = [(t.api_key.get_secret_value().encode(), t) for t in tenants]
        self._admin = admin_token.encode()

    def tenant(self, authorization: str | None) -> TenantConfig:
        token = bearer(authorization)
        if token is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        given = token.encode()
        found: TenantConfig | None = None
        for key, tenant in self._tenants:  # every key is compared: no early exit by timing
            if hmac.compare_digest(key, given):
                found = tenant
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def admin(self, authorization: str | None) -> None:
        token = bearer(authorization)
        if token is None or not hmac.compare_digest(self._admin, token.encode()):
            raise Unauthorized("the admin API needs the admin token")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def openai_error(error: RouterError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.kind, "code": error.status}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def kserve_error(error: RouterError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


class ClosingStream(StreamingResponse):
    """Server-sent events that run ``close`` when the response ends, also when the client
    left mid-way: the request's node call ends at once, not at garbage collection."""

    def __init__(
        self,
        body: Any,
        close: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()
