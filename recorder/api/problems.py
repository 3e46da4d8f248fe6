"""RFC 9457 problem details: every error of the read API is `application/problem+json`.

`error_middleware` is the outermost middleware: a `Problem` raised anywhere becomes its
response, aiohttp's own HTTP errors (unknown route, wrong method) become problems too, and
anything unexpected becomes a generic 500 whose traceback only goes to the server log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from recorder.logs import event

log = logging.getLogger("recorder.api")

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error the API reports on purpose. `detail` is shown to the client: never a secret."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def bad_request(detail: str, parameter: str | None = None) -> Problem:
    return Problem(400, detail, extra={"parameter": parameter} if parameter else None)


def not_found(detail: str) -> Problem:
    return Problem(404, detail)


def problem_response(
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extra or {})
    response = web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_JSON, headers=headers
    )
    return response


def render(problem: Problem) -> web.Response:
    return problem_response(
        problem.status, problem.detail, headers=problem.headers, extra=problem.extra
    )


# What aiohttp's own errors say, without echoing anything the client sent.
_HTTP_DETAIL = {
    404: "no such resource",
    405: "method not allowed on this resource",
    413: "request too large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return render(problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        detail = _HTTP_DETAIL.get(exc.status, HTTPStatus(exc.status).phrase.lower())
        return problem_response(exc.status, detail, headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("read API: unexpected error on %s %s", request.method, request.path,
                      extra=event("api.request.failed"))
        return problem_response(500, "internal error; the server log has the details")
