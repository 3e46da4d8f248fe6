"""`GET /events/stream`: the event log as server-sent events.

Each event is `id: <position>`, `event: event`, `data: <the same JSON as /events items>`.
A client resumes with `Last-Event-ID` (EventSource sends it on reconnect) or `?after=`;
the header wins. The handler polls the log (bounded by log_head, as /events, so it never
skips a position), sends at most `limit` events per poll, sleeps `POLL_S` when there was
nothing new, and writes a `: keepalive` comment after `HEARTBEAT_S` without events, which
also detects clients that went away. Streams end when the application shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from aiohttp import web

from recorder import api_sql as q
from recorder.api import models as m
from recorder.api.params import parse
from recorder.api.routes import POOL, event_item
from recorder.logs import event

STOPPING = web.AppKey("stream_stopping", asyncio.Event)
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
    # The first read happens before the headers go out: a broken database is a 500 problem,
    # not a stream that ends at once.
    rows = await pool.fetch(q.EVENTS_AFTER, position, p.limit)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    quiet_since = time.monotonic()
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), poll_s)
            if len(rows) < p.limit and rows:
                await asyncio.sleep(0)  # let other requests run between full batches
            rows = [] if stopping.is_set() else await pool.fetch(
                q.EVENTS_AFTER, position, p.limit)
    except ConnectionResetError:
        pass  # the client went away
    except Exception:  # headers are sent: end the stream, the client resumes from its id
        log.exception("read API: event stream stopped at position %d", position,
                      extra=event("api.stream.failed"))
    return response
