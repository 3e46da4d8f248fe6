"""`GET /events/stream`: the event log as server-sent events.

Each event is `id: <position>`, `event: event`, `data: <the same JSON as /events items>`.
A client resumes with `Last-Event-ID` (EventSource sends it on reconnect) or `?after=`;
the header wins. The handler polls the log (bounded by log_head, as /events, so it never
skips a position), sends at most `limit` events per poll, waits when there was nothing new
until a commit is announced (`COMMITS`, LISTEN/NOTIFY) or `POLL_S` passed, and writes a
`: keepalive` comment after `HEARTBEAT_S` without events, which
also detects clients that went away. Streams end when the application shuts down.

Database faults: the first read happens before the headers go out, so a lost or refused
connection there is retried / answered 503 by the middleware like any request. Once the
headers are out no other status can be sent, and ending the stream would not help: EventSource
reconnects, and a 503 then makes it give up for good. So a poll that hits a fault counts as
a poll that found nothing: heartbeats go on, the next poll (on a fresh connection, after
`RETRY_AFTER_S` when the database refused) resumes from the last position sent, and nothing
is skipped or sent twice. The outage is logged once, by the pool (database_faults.Outage).

HEAD gets GET's status and headers (the first read included) and no stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import orjson
from aiohttp import web

from recorder.api import models as m
from recorder.api import sql as q
from recorder.api.database_faults import RETRY_AFTER_S, DatabaseUnavailable
from recorder.api.params import parse
from recorder.api.routes import POOL, event_item
from recorder.logs import event


class CommitWaiter(Protocol):
    """recorder.eventlog.wakeups.CommitWakeups, as the stream sees it."""

    generation: int

    async def wait(self, timeout_s: float, since: int | None = None) -> bool: ...


STOPPING = web.AppKey("stream_stopping", asyncio.Event)
COMMITS: web.AppKey[CommitWaiter | None] = web.AppKey("stream_commits")
POLL_S = web.AppKey("stream_poll_s", float)
HEARTBEAT_S = web.AppKey("stream_heartbeat_s", float)

log = logging.getLogger("recorder.api")


def sse_event(item: dict[str, object], position: int) -> bytes:
    data = orjson.dumps(item, option=orjson.OPT_UTC_Z)
    return b"id: %d\nevent: event\ndata: %s\n\n" % (position, data)


async def stream_events(request: web.Request) -> web.StreamResponse:
    p = parse(m.StreamQuery, request)
    position = p.last_event_id if p.last_event_id is not None else p.after
    app = request.app
    pool, stopping = app[POOL], app[STOPPING]
    poll_s, heartbeat_s = app[POLL_S], app[HEARTBEAT_S]
    # The first read happens before the headers go out: a broken database is a 503 problem,
    # not a stream that ends at once.
    commits = app[COMMITS]
    mark = commits.generation if commits is not None else 0  # noted before each read
    rows = await pool.fetch(q.EVENTS_AFTER, position, p.limit)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    if request.method == "HEAD":
        return response  # aiohttp sends the headers and no body
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    quiet_since = time.monotonic()
    wait_s = poll_s
    try:
        while not stopping.is_set():
            if rows:
                chunk = b"".join(sse_event(event_item(r), r["position"]) for r in rows)
                await response.write(chunk)
                position = rows[-1]["position"]
                quiet_since = time.monotonic()
            else:
                if time.monotonic() - quiet_since >= heartbeat_s:
                    await response.write(b": keepalive\n\n")
                    quiet_since = time.monotonic()
                await _pause(stopping, commits, wait_s, mark)
            if len(rows) < p.limit and rows:
                await asyncio.sleep(0)  # let other requests run between full batches
            rows, wait_s = [], poll_s
            if not stopping.is_set():
                mark = commits.generation if commits is not None else 0
                try:
                    rows = await pool.fetch(q.EVENTS_AFTER, position, p.limit)
                except DatabaseUnavailable as fault:  # as a poll that found nothing
                    wait_s = poll_s if fault.lost else max(poll_s, RETRY_AFTER_S)
    except ConnectionResetError:
        pass  # the client went away
    except Exception:  # headers are sent: end the stream, the client resumes from its id
        log.exception("read API: event stream stopped at position %d", position,
                      extra=event("api.stream.failed"))
    return response


async def _pause(
    stopping: asyncio.Event, commits: CommitWaiter | None, wait_s: float, since: int
) -> None:
    """Until the app stops, a commit is announced after the read that found nothing (`since`),
    or `wait_s` passed (the polling fallback)."""
    if commits is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), wait_s)
        return
    waiters = {asyncio.ensure_future(stopping.wait()),
               asyncio.ensure_future(commits.wait(wait_s, since))}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
