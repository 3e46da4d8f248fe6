"""What reconciliation with LivePerson's history costs: requests per conversation, time per 1,000.

    python bench/reconcile.py [--consumers C] [--conversations M] [--withhold P] [--seed S]

1. Record: the simulator runs C consumers x M conversations of seeded traffic (every one
   closed at the end) while the simulator withholds a share P of the messaging events from the
   socket; the daemon's ingest and project roles record them (reconciliation off).
2. Reconcile: a `Reconciler` (the code `recorder reconcile` runs) checks every conversation
   against the simulator's history, with the REST budget lifted so the figure is the
   reconciler's own cost, not the budget's; a second pass checks them all again (nothing left
   to backfill: the steady-state cost).
   `--partial P` serves that share of the history's pages with records missing (each page is
   fetched again, up to three times, and the attempts combined).
3. Report: requests per conversation, seconds per 1,000 conversations (both passes), events
   backfilled against events withheld (they must be equal: exit 1 otherwise), and what the
   default budget (RECORDER_REST_REQUESTS_PER_MINUTE=120) makes of 1,000 conversations.

Database rule as bench/append.py: RECORDER_DATABASE_URL names a server for a scratch
database, else an embedded server in a temporary directory. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from append import CorrectnessError, bench_database, report, say

from recorder.app import build_app
from recorder.config import ConsumerIdentity, Secret, load_settings
from recorder.db.target import DatabaseTarget
from recorder.eventlog.writer import EventWriter
from recorder.history.messaging_history import MessagingHistory
from recorder.history.reconciler import IdentityTokens, Reconciler
from recorder.history.rest import RestClient
from recorder.simulator import Faults, Simulator
from recorder.simulator.traffic import close_everything
from recorder.ums.discovery import Discovery
from recorder.ums.tokens import StaticTokenSource

ACCOUNT = "71234567"
DEFAULT_BUDGET_PER_MINUTE = 120.0


async def _poll(condition: object, what: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise CorrectnessError(f"{what}: not reached within {within_s:.0f}s")
        await asyncio.sleep(0.2)


async def record(sim: Simulator, consumers: list[str], target: DatabaseTarget,
                 conversations: int, withhold: float) -> tuple[int, int]:
    """Traffic with withholding, recorded by the daemon; (stored events, withheld)."""
    identities = tuple(ConsumerIdentity(f"c{n}", jwt=Secret(sim.token_for(c)))
                       for n, c in enumerate(consumers))
    settings = dataclasses.replace(
        load_settings(environ={}), account=ACCOUNT, csds_url=sim.http_url, ums_url=sim.ws_url,
        consumers=identities, reconcile=False, agent_profiles=False,
        api_listen="127.0.0.1:1")
    stop = asyncio.Event()
    async with build_app(settings, target, roles=("ingest", "project")) as app:
        running = asyncio.ensure_future(app.run(stop))
        sim.faults = Faults(withhold_probability=withhold)
        total = len(consumers) * conversations
        # Enough steps for every conversation to run its course (about a dozen each).
        await sim.start_traffic(consumers, conversations, rate=3000, total_events=total * 14)
        sim.faults = Faults()
        close_everything(sim, consumers)
        stored = sum(len(d.events) for c in consumers for cid in sim.conversation_ids(c)
                     for d in sim.world.conversation(cid).dialogs)
        withheld = len(sim.withheld_events())
        total = sum(len(sim.conversation_ids(c)) for c in consumers)
        connection = await asyncpg.connect(target.dsn)
        try:
            async def recorded() -> bool:
                count = await connection.fetchval(
                    "SELECT count(*) FROM events WHERE sequence IS NOT NULL")
                closed = await connection.fetchval(
                    "SELECT count(*) FROM conversations WHERE stage = 'CLOSE'")
                return bool(count == stored - withheld and closed == total)

            try:
                await _poll(recorded, "traffic recorded and projected", 300)
            except CorrectnessError:
                count = await connection.fetchval(
                    "SELECT count(*) FROM events WHERE sequence IS NOT NULL")
                closed = await connection.fetchval(
                    "SELECT count(*) FROM conversations WHERE stage = 'CLOSE'")
                say(f"recorded {count} of {stored - withheld}, closed {closed} of {total}")
                raise
        finally:
            await connection.close()
        stop.set()
        await running
    return stored, withheld


async def reconcile_all(sim: Simulator, consumers: list[str], target: DatabaseTarget,
                        ) -> tuple[float, int, int, int]:
    """One pass over every conversation: (seconds, requests, backfilled, history records)."""
    pool = await asyncpg.create_pool(target.dsn, min_size=1, max_size=4)
    writer = EventWriter(target, lock_key=None)
    stop = asyncio.Event()
    writing = asyncio.ensure_future(writer.run(stop))
    try:
        async with aiohttp.ClientSession() as http:
            discovery = Discovery(sim.http_url, ACCOUNT, http)
            rest = RestClient(http, requests_per_minute=600_000)
            tokens = IdentityTokens([(f"c{n}", StaticTokenSource(f"c{n}", sim.token_for(c)))
                                     for n, c in enumerate(consumers)])
            reconciler = Reconciler(pool, writer.put,
                                    MessagingHistory(rest, discovery.history_url, ACCOUNT),
                                    tokens, ACCOUNT, after_s=0, retry_s=60)
            ids = [r[0] for r in await pool.fetch(
                "SELECT conversation_id FROM conversations ORDER BY conversation_id")]
            started = time.perf_counter()
            outcomes = await reconciler.reconcile_many(ids)
            seconds = time.perf_counter() - started
    finally:
        stop.set()
        await writing
        await pool.close()
    bad = [o for o in outcomes if o.status not in ("reconciled", "partial")]
    if bad:
        raise CorrectnessError(f"{len(bad)} conversations not reconciled: {bad[:3]}")
    return (seconds, rest.requests, sum(o.backfilled for o in outcomes),
            sum(o.history_records for o in outcomes))


async def bench(args: argparse.Namespace) -> dict[str, object]:
    async with bench_database() as (target, where), Simulator(
            account=ACCOUNT, seed=args.seed, keep_journal=False) as sim:
        consumers = [sim.new_consumer() for _ in range(args.consumers)]
        say(f"recording {args.consumers} x {args.conversations} conversations, withholding "
            f"{args.withhold:.1%} of events")
        stored, withheld = await record(sim, consumers, target, args.conversations, args.withhold)
        total = sum(len(sim.conversation_ids(c)) for c in consumers)
        say(f"{stored} events stored upstream, {withheld} withheld from the socket")
        sim.faults = Faults(history_partial_probability=args.partial)
        first = await reconcile_all(sim, consumers, target)
        say(f"first pass: {first[0]:.2f}s, {first[1]} requests, {first[2]} backfilled")
        second = await reconcile_all(sim, consumers, target)
        say(f"second pass: {second[0]:.2f}s, {second[1]} requests, {second[2]} backfilled")
        connection = await asyncpg.connect(target.dsn)
        try:
            backfilled = await connection.fetchval(
                "SELECT count(*) FROM events WHERE type = 'msgHist.MessageEventRecord'")
        finally:
            await connection.close()
        if backfilled != withheld or first[2] != withheld or second[2] != 0:
            raise CorrectnessError(
                f"backfilled {backfilled} (passes {first[2]}, {second[2]}), withheld {withheld}")
        per_conversation = first[1] / total
        return {
            "database": where, "conversations": total, "partial_pages": args.partial,
            "events_upstream": stored, "withheld": withheld, "backfilled": backfilled,
            "history_records": first[3],
            "requests_per_conversation": round(per_conversation, 3),
            "first_pass_s_per_1000": round(first[0] / total * 1000, 2),
            "second_pass_s_per_1000": round(second[0] / total * 1000, 2),
            "second_pass_requests_per_conversation": round(second[1] / total, 3),
            "default_budget_s_per_1000": round(
                per_conversation * 1000 / DEFAULT_BUDGET_PER_MINUTE * 60, 1),
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", type=int, default=50)
    parser.add_argument("--conversations", type=int, default=20, help="per consumer")
    parser.add_argument("--withhold", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--partial", type=float, default=0.0,
                        help="share of history pages served partial (records missing)")
    args = parser.parse_args(argv)
    return report(lambda: asyncio.run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
