"""`recorder reconcile`: check conversations against LivePerson's history now.

`--conversation ID` (repeatable), `--since TIME` (started or changed since then), or nothing:
every closed conversation never checked closed, changed since its check, or checked against a
partial history. Without `--conversation`, each identity's newest conversations in the
history's list are also looked through for any the socket never reported. It uses every
configured identity's token (sign-up identities excepted: a new sign-up is a new consumer)
and appends through a writer of its own, beside any running daemon:
backfilled events keep their live dedupe keys, so a daemon's copy and ours are stored once.
The report (JSON) goes to stdout, the progress bar to a terminal's stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import orjson

from recorder.config import Settings
from recorder.db import migrate
from recorder.db.target import open_database
from recorder.errors import ConfigError
from recorder.eventlog.writer import EventWriter
from recorder.history import sql
from recorder.history.messaging_history import MessagingHistory
from recorder.history.reconciler import IdentityTokens, Reconciler
from recorder.history.rest import RestClient
from recorder.identities import require_recording_settings, token_source
from recorder.progress import ProgressBar
from recorder.ums.discovery import Discovery


def add_arguments(parser: argparse.ArgumentParser) -> None:
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--conversation", action="append", metavar="ID",
                        help="check this conversation (repeatable)")
    chosen.add_argument("--since", metavar="TIME",
                        help="check conversations started or changed since TIME (ISO 8601, "
                        "UTC unless it says otherwise)")


def _since(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError("--since", f"must be an ISO 8601 time; got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def _chosen(connection: asyncpg.Connection, args: argparse.Namespace) -> list[str]:
    if args.conversation:
        return list(dict.fromkeys(args.conversation))
    if args.since:
        return [r[0] for r in await connection.fetch(sql.SINCE, _since(args.since))]
    return [r[0] for r in await connection.fetch(sql.ALL_DUE)]


async def reconcile_command(settings: Settings, args: argparse.Namespace) -> int:
    account = require_recording_settings(settings)
    if args.since:
        _since(args.since)  # a bad time fails before anything starts
    bar = ProgressBar(sys.stderr, unit="conversations") if sys.stderr.isatty() else None
    started = time.monotonic()
    async with open_database(settings) as target:
        await migrate.require_current_schema(target)
        pool = await asyncpg.create_pool(target.dsn, **target.connect_options(min_size=1,
                                                                              max_size=4))
        writer = EventWriter(target, lock_key=None, queue_size=settings.queue_size,
                             batch_size=settings.writer_batch_size,
                             batch_wait_ms=settings.writer_batch_wait_ms)
        stop = asyncio.Event()
        writing = asyncio.ensure_future(writer.run(stop))
        try:
            async with aiohttp.ClientSession() as http:
                discovery = Discovery(settings.csds_url, account, http)
                rest = RestClient(http, requests_per_minute=settings.rest_requests_per_minute,
                                  server_error_delays_s=settings.rest_retry_s)
                sources = [(i.name, token_source(i, account, http, discovery.idp_url))
                           for i in settings.identities()]
                reconciler = Reconciler(
                    pool, writer.put, MessagingHistory(rest, discovery.history_url, account),
                    IdentityTokens(sources), account, after_s=0,
                    retry_s=settings.reconcile_retry_s)
                async with pool.acquire() as connection:
                    chosen = await _chosen(connection, args)
                outcomes = await reconciler.reconcile_many(chosen, progress=bar)
                if not args.conversation:  # and what the socket never reported
                    outcomes += await reconciler.discover()
        finally:
            if bar is not None:
                bar.finish()
            stop.set()  # the writer drains its queue before it returns
            await writing
            await pool.close()
    counts = collections.Counter(o.status for o in outcomes)
    report: dict[str, Any] = {
        "conversations": len(outcomes),
        "results": dict(counts),
        "history_records": sum(o.history_records for o in outcomes),
        "matched": sum(o.matched for o in outcomes),
        "backfilled": sum(o.backfilled for o in outcomes),
        "only_in_log": sum(o.only_in_log for o in outcomes),
        "content_differs": sum(o.content_differs for o in outcomes),
        "unreported": sum(1 for o in outcomes if o.unreported),
        "requests": rest.requests,
        "seconds": round(time.monotonic() - started, 3),
        "problems": [{"conversation_id": o.conversation_id, "status": o.status,
                      "reason": o.reason} for o in outcomes if o.reason][:100],
    }
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if counts.get("failed") else 0
