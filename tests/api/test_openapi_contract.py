"""Schemathesis against the in-process API: no 5xx, and every response matches /openapi.json.

The app is served on 127.0.0.1 by the aiohttp test server of the `client` fixture; Hypothesis
drives each operation from a worker thread (schemathesis' `case.call` is synchronous) while
the event loop keeps serving. /events/stream is left out: it never ends by design.
"""

from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks
from schemathesis.generation.modes import GenerationMode

from tests.api.conftest import AUTH, TOKEN

Client = TestClient[web.Request, web.Application]

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
SKIP = {"/events/stream"}


# Invalid requests may be refused by aiohttp's HTTP parser (a request line over 8 KiB) before
# the application sees them, as text/plain: for those only the status is held to account.
NEGATIVE_CHECKS = [checks.not_a_server_error, checks.negative_data_rejection]


def exercise(schema: Any, base_url: str, mode: GenerationMode, examples: int) -> list[str]:
    ran: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIP:
            continue
        if mode is GenerationMode.NEGATIVE and not operation.definition.raw.get("parameters"):
            continue  # nothing to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=dict(AUTH), timeout=10)
            case.validate_response(
                response, checks=CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS)
            assert TOKEN not in response.text

        check()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


async def test_api_conforms_to_its_openapi_document(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(spec)
    base_url = str(client.make_url("")).rstrip("/")
    ran = await asyncio.to_thread(exercise, schema, base_url, GenerationMode.POSITIVE, 25)
    assert len(ran) == len(spec["paths"]) - len(SKIP)
    negative = await asyncio.to_thread(exercise, schema, base_url, GenerationMode.NEGATIVE, 10)
    assert len(negative) >= 5
