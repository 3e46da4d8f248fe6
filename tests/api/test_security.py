"""Authentication, the listen rule, and errors: problem+json, no traces, no tokens."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from recorder.api import check_listen_allowed
from recorder.errors import ConfigError
from tests.api.conftest import AUTH, TOKEN, ClientFactory, make_app
from tests.projection_helpers import CONV

Client = TestClient[web.Request, web.Application]

PROTECTED = ["/conversations", f"/conversations/{CONV}", f"/conversations/{CONV}/messages",
             f"/conversations/{CONV}/events", "/events", "/readyz", "/metrics", "/openapi.json",
             "/no-such-route"]


async def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert set(body) >= {"type", "title", "status", "detail"} and body["status"] == status
    text = await response.text()
    for leak in ("Traceback", "SELECT", "asyncpg", 'File "', TOKEN):
        assert leak not in text
    return body


@pytest.mark.parametrize("path", PROTECTED)
async def test_missing_token_is_401_with_challenge(anonymous: Client, path: str) -> None:
    response = await anonymous.get(path)
    await assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [
    "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", TOKEN, f"Bearer {TOKEN[:-1]}"])
async def test_wrong_token_is_401(anonymous: Client, header: str) -> None:
    response = await anonymous.get("/conversations", headers={"Authorization": header})
    await assert_problem(response, 401)
    assert "Bearer" in response.headers["WWW-Authenticate"]


async def test_right_token_and_open_livez(anonymous: Client) -> None:
    assert (await anonymous.get("/conversations", headers=AUTH)).status == 200
    assert (await anonymous.get("/livez")).status == 200


@pytest.mark.parametrize("name", ["token", "access_token", "Access_Token"])
async def test_token_in_query_string_is_refused(anonymous: Client, name: str) -> None:
    for path in ("/conversations", "/livez"):
        response = await anonymous.get(path, params={name: TOKEN}, headers=AUTH)
        body = await assert_problem(response, 400)
        assert TOKEN not in str(body) and TOKEN not in str(dict(response.headers))


async def test_no_token_configured_means_open(
    aiohttp_client: ClientFactory, pool: Any, recorded: int
) -> None:
    client = await aiohttp_client(make_app(pool, token=None))
    assert (await client.get("/conversations")).status == 200


def test_listen_rule() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        check_listen_allowed(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.2", "example.com", "10.0.0.1", ""):
        with pytest.raises(ConfigError) as raised:
            check_listen_allowed(host, None)
        assert raised.value.setting == "RECORDER_API_TOKEN"
        check_listen_allowed(host, "a-token")


@pytest.mark.parametrize("query", [
    "limit=0", "limit=1001", "limit=abc", "limit=1&limit=2", "after=!!!", "after=bm9wZQ",
    "updated_since=yesterday", "closed_between=2024-01-01T00:00:00Z",
    "closed_between=2024-02-01T00:00:00Z,2024-01-01T00:00:00Z", "state=", "state=a%00b",
    "colour=red", "updated_since=0001-01-01T00:00:00%2B01:00",
])
async def test_bad_parameters_are_400_problems(client: Client, query: str) -> None:
    body = await assert_problem(await client.get(f"/conversations?{query}"), 400)
    assert "parameter" in body


@pytest.mark.parametrize("url", [
    "/events?after=-1", "/events?after=99999999999999999999", "/events?limit=100000",
    f"/conversations/{CONV}/messages?after=WyJhIl0", "/conversations/a%00b",
])
async def test_more_bad_parameters(client: Client, url: str) -> None:
    await assert_problem(await client.get(url), 400)


async def test_wrong_method_is_405_problem(client: Client) -> None:
    response = await client.post("/conversations", data=b"{}")
    await assert_problem(response, 405)


async def test_internal_error_is_a_generic_500(client: Client, pool: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    await pool.close()
    for path in ("/conversations", f"/conversations/{CONV}", "/events"):
        body = await assert_problem(await client.get(path), 500)
        assert body["detail"] == "internal error; the server log has the details"
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
    await assert_problem(await client.get("/readyz"), 503)


async def test_schema_behind_is_not_ready(client: Client, pool: Any) -> None:
    await pool.execute("UPDATE alembic_version SET version_num = 'old'")
    body = await assert_problem(await client.get("/readyz"), 503)
    assert body["schema_revision"] == "old"


async def test_readiness_callback(aiohttp_client: ClientFactory, pool: Any, recorded: int) -> None:
    state = {"ready": True, "writer": "running"}

    async def readiness() -> dict[str, Any]:
        return dict(state)

    client = await aiohttp_client(make_app(pool, readiness=readiness), headers=AUTH)
    assert (await (await client.get("/readyz")).json())["checks"] == state
    state["ready"] = False
    body = await assert_problem(await client.get("/readyz"), 503)
    assert body["checks"]["writer"] == "running"


async def test_metrics_absent_is_404(aiohttp_client: ClientFactory, pool: Any) -> None:
    from recorder.api import create_app

    client = await aiohttp_client(create_app(pool, token=TOKEN), headers=AUTH)
    await assert_problem(await client.get("/metrics"), 404)


async def test_token_never_in_any_response(client: Client, anonymous: Client) -> None:
    urls = [*PROTECTED, "/livez", "/events/stream?limit=abc", "/conversations?token=x",
            f"/conversations?access_token={TOKEN}"]
    for who in (client, anonymous):
        for url in urls:
            response = await who.get(url)
            raw = await response.read()
            assert TOKEN.encode() not in raw
            assert all(TOKEN not in v for v in response.headers.values())
