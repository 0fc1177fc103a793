"""Unit tests for router.api.common: API keys, bounded bodies, JSON parsing and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from starlette.requests import Request

from router.admission import TenantConfig
from router.api.common import (
    KeyRing,
    bearer,
    kserve_error,
    openai_error,
    parse_json,
    read_body,
)
from router.errors import BadRequest, PayloadTooLarge, RateLimited, Unauthorized

ADMIN = "admin-token-0123456789"


def _tenant(name: str, key: str) -> TenantConfig:
    return TenantConfig(name=name, api_key=SecretStr(key), reserved_mu_s=10.0)


@pytest.fixture()
def keys() -> KeyRing:
    return KeyRing([_tenant("acme", "key-acme"), _tenant("globex", "key-globex")], ADMIN)


# -- KeyRing -------------------------------------------------------------------------------
def test_right_key_gives_its_tenant(keys: KeyRing) -> None:
    assert keys.tenant("Bearer key-acme").name == "acme"
    assert keys.tenant("Bearer key-globex").name == "globex"
    assert keys.tenant("bearer   key-acme  ").name == "acme"  # scheme case, spaces


@pytest.mark.parametrize("header", ["Bearer key-acm", "Bearer key-acme2", "Bearer KEY-ACME"])
def test_wrong_key_is_unauthorized(keys: KeyRing, header: str) -> None:
    with pytest.raises(Unauthorized, match="invalid API key"):
        keys.tenant(header)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic key-acme", "key-acme"])
def test_missing_key_is_unauthorized(keys: KeyRing, header: str | None) -> None:
    with pytest.raises(Unauthorized, match="missing API key") as info:
        keys.tenant(header)
    assert info.value.status == 401


def test_admin_token_is_not_a_tenant_key(keys: KeyRing) -> None:
    with pytest.raises(Unauthorized):
        keys.tenant(f"Bearer {ADMIN}")
    keys.admin(f"Bearer {ADMIN}")  # no error


@pytest.mark.parametrize("header", [None, "Bearer key-acme", f"Bearer {ADMIN}x", "Basic x"])
def test_tenant_keys_are_not_the_admin_token(keys: KeyRing, header: str | None) -> None:
    with pytest.raises(Unauthorized, match="admin token"):
        keys.admin(header)


def test_bearer() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("BEARER abc") == "abc"
    assert bearer("Token abc") is None
    assert bearer(None) is None


# -- parse_json ----------------------------------------------------------------------------
def test_parse_json() -> None:
    assert parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]}


@pytest.mark.parametrize(("body", "match"), [(b"", "empty"), (b"{nope", "not valid JSON")])
def test_parse_json_errors_are_bad_requests(body: bytes, match: str) -> None:
    with pytest.raises(BadRequest, match=match) as info:
        parse_json(body)
    assert info.value.status == 400


# -- read_body -----------------------------------------------------------------------------
def _request(
    chunks: Sequence[bytes], headers: dict[str, str] | None = None
) -> tuple[Request, list[int]]:
    """A Starlette request whose body arrives in ``chunks``; the list counts receive calls."""
    pending = list(chunks)
    calls = [0]

    async def receive() -> dict[str, Any]:
        calls[0] += 1
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": raw_headers,
        "query_string": b"",
    }
    return Request(scope, receive), calls


def test_read_body_joins_chunks() -> None:
    request, _ = _request([b"ab", b"cd", b"ef"])
    assert asyncio.run(read_body(request, 6)) == b"abcdef"


def test_read_body_refuses_by_content_length_before_reading() -> None:
    request, calls = _request([b"x" * 10], {"Content-Length": "2000"})
    with pytest.raises(PayloadTooLarge, match="2000 bytes") as info:
        asyncio.run(read_body(request, 1024))
    assert info.value.status == 413
    assert calls[0] == 0  # nothing was read


def test_read_body_refuses_by_streamed_size() -> None:
    chunks = [b"x" * 400] * 10  # no Content-Length (chunked transfer)
    request, calls = _request(chunks)
    with pytest.raises(PayloadTooLarge, match="1024-byte limit"):
        asyncio.run(read_body(request, 1024))
    assert calls[0] == 3  # stopped as soon as the limit was passed


def test_read_body_refuses_a_body_longer_than_its_content_length_says() -> None:
    request, _ = _request([b"x" * 600, b"x" * 600], {"Content-Length": "10"})
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(request, 1024))


def test_read_body_at_the_limit_is_accepted() -> None:
    request, _ = _request([b"x" * 1024], {"Content-Length": "1024"})
    assert len(asyncio.run(read_body(request, 1024))) == 1024


def test_read_body_ignores_a_non_numeric_content_length() -> None:
    request, _ = _request([b"{}"], {"Content-Length": "lots"})
    assert asyncio.run(read_body(request, 1024)) == b"{}"


# -- error bodies --------------------------------------------------------------------------
def test_openai_error_body_and_headers() -> None:
    response = openai_error(RateLimited("over budget", 2.5))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert orjson.loads(response.body) == {
        "error": {"message": "over budget", "type": "rate_limit_error", "code": 429}
    }


def test_kserve_error_body() -> None:
    response = kserve_error(BadRequest("bad tensor"))
    assert response.status_code == 400
    assert orjson.loads(response.body) == {"error": "bad tensor"}
    assert response.headers["content-type"] == "application/json"
