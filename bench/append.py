"""Append throughput of the event writer, against a raw COPY baseline on the same server.

    python bench/append.py [--events N] [--batch-size B] [--seed S]

With RECORDER_DATABASE_URL set, works in a scratch database `recorder_bench_<pid>` on that
server (created, migrated, dropped WITH (FORCE)); the configured database is never written.
Otherwise starts the embedded server in a temporary state directory, removed at the end.

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Timings are reported, never asserted: only a correctness failure exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from recorder.config import load_settings
from recorder.db import migrate
from recorder.db.embedded import EmbeddedPostgres
from recorder.db.target import DatabaseTarget, to_asyncpg_dsn
from recorder.eventlog.records import EventRecord, dedupe_digest
from recorder.eventlog.writer import AppendResult, EventWriter

#: ratio = the writer's events/s over the raw COPY's, both measured in the same run (issue 14).
BUDGET = {"events_per_s_min": 20_000, "ratio_min": 0.8}

ACCOUNT_ID = "12345678"
MESSAGING_TYPE = "ms.MessagingEventNotification"
CONVERSATION_TYPE = "cqm.ExConversationChangeNotification"
BASE_TS_MS = 1_700_000_000_000
COPY_COLUMNS = (
    "position", "received_at", "account_id", "consumer_id", "session_id", "kind", "type",
    "change_type", "conversation_id", "dialog_id", "sequence", "originator_id", "server_ts",
    "dedupe_key", "payload",
)

WORDS = [
    "hello", "hi", "thanks", "order", "delivery", "refund", "account", "password", "please",
    "help", "when", "where", "why", "tracking", "number", "invoice", "card", "payment",
    "delayed", "package", "yesterday", "today", "tomorrow", "store", "address", "change",
    "cancel", "subscription", "plan", "upgrade", "agent", "minute", "sure", "great", "okay",
]

CONSUMER_FEATURES = ["PHOTO_SHARING", "AUTO_MESSAGES", "RICH_CONTENT", "QUICK_REPLIES"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the workload --------------------------------------------------------------------------------


@dataclasses.dataclass
class Conversation:
    conversation_id: str
    consumer_id: str
    session_id: str
    participant_id: str  # the consumer's UMS participant id
    agent_id: str
    start_ts: int
    clock_ms: int
    next_sequence: int = 0
    updates: int = 0
    unread: dict[str, list[int]] = dataclasses.field(default_factory=dict)


class Workload:
    """Seeded, so two runs with one seed append byte-identical payloads."""

    def __init__(self, seed: int, conversations: int, identities: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        sessions = [self._uuid() for _ in range(identities)]
        consumers = [f"consumer-{i + 1}" for i in range(identities)]
        self.conversations: list[Conversation] = []
        for _ in range(conversations):
            identity = rng.randrange(identities)
            start = BASE_TS_MS + rng.randrange(3_600_000)
            self.conversations.append(
                Conversation(
                    conversation_id=self._uuid(),
                    consumer_id=consumers[identity],
                    session_id=sessions[identity],
                    participant_id=self._uuid(),
                    agent_id=f"{ACCOUNT_ID}.{rng.randrange(1_000_000_000, 9_999_999_999)}",
                    start_ts=start,
                    clock_ms=start,
                )
            )

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=self.rng.randint(low, high)))

    def events(self, count: int) -> list[EventRecord]:
        rng = self.rng
        records: list[EventRecord] = []
        for _ in range(count):
            conversation = rng.choice(self.conversations)
            conversation.clock_ms += rng.randint(200, 30_000)
            roll = rng.random()
            if conversation.updates == 0 or roll < 0.10:
                records.append(self._upsert(conversation))
            elif roll < 0.58:
                records.append(self._content(conversation))
            elif roll < 0.66:
                records.append(self._rich_content(conversation))
            else:
                records.append(self._receipt(conversation))
        return records

    def _originator(self, conversation: Conversation, from_consumer: bool) -> dict[str, Any]:
        if from_consumer:
            return {
                "originatorClientProperties": {
                    "type": "BROWSER",
                    "appId": "webAsyncMessaging",
                    "ipAddress": f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.1",
                    "deviceFamily": "DESKTOP",
                    "integration": "WEB_SDK",
                    "browser": "CHROME",
                    "features": CONSUMER_FEATURES,
                },
                "originatorId": conversation.participant_id,
                "originatorMetadata": {"id": conversation.participant_id, "role": "CONSUMER"},
            }
        return {
            "originatorId": conversation.agent_id,
            "originatorMetadata": {"id": conversation.agent_id, "role": "ASSIGNED_AGENT"},
        }

    def _messaging(
        self, conversation: Conversation, event: dict[str, Any], from_consumer: bool
    ) -> EventRecord:
        # The main dialog's id is the conversation id, as in the Messaging Window API.
        dialog_id = conversation.conversation_id
        sequence = conversation.next_sequence
        conversation.next_sequence += 1
        originator = self._originator(conversation, from_consumer)
        payload = {
            "sequence": sequence,
            **originator,
            "serverTimestamp": conversation.clock_ms,
            "event": event,
            "conversationId": conversation.conversation_id,
            "dialogId": dialog_id,
        }
        if event["type"] != "AcceptStatusEvent":
            # The other side has yet to acknowledge this one.
            side = "agent" if from_consumer else "consumer"
            conversation.unread.setdefault(side, []).append(sequence)
        return EventRecord(
            received_at=0.0,
            account_id=ACCOUNT_ID,
            consumer_id=conversation.consumer_id,
            session_id=conversation.session_id,
            kind="messaging",
            type=MESSAGING_TYPE,
            change_type=event["type"],
            conversation_id=conversation.conversation_id,
            dialog_id=dialog_id,
            sequence=sequence,
            originator_id=originator["originatorId"],
            server_ts=conversation.clock_ms / 1000,
            dedupe_key=dedupe_digest("messaging", dialog_id, sequence),
            payload=orjson.dumps(payload).decode(),
        )

    def _content(self, conversation: Conversation) -> EventRecord:
        event = {"type": "ContentEvent", "message": self._text(1, 20), "contentType": "text/plain"}
        return self._messaging(conversation, event, from_consumer=self.rng.random() < 0.5)

    def _rich_content(self, conversation: Conversation) -> EventRecord:
        buttons = [
            {
                "type": "button",
                "title": self._text(1, 3),
                "click": {
                    "metadata": [{"type": "ExternalId", "id": f"opt-{i}"}],
                    "actions": [{"type": "publishText", "text": self._text(1, 4)}],
                },
            }
            for i in range(self.rng.randint(1, 3))
        ]
        event = {
            "type": "RichContentEvent",
            "content": {
                "type": "vertical",
                "elements": [{"type": "text", "text": self._text(4, 15)}, *buttons],
            },
        }
        return self._messaging(conversation, event, from_consumer=False)

    def _receipt(self, conversation: Conversation) -> EventRecord:
        from_consumer = self.rng.random() < 0.5
        side = "consumer" if from_consumer else "agent"
        pending = conversation.unread.pop(side, None) or [max(conversation.next_sequence - 1, 0)]
        event = {
            "type": "AcceptStatusEvent",
            "status": self.rng.choice(("ACCEPT", "READ")),
            "sequenceList": pending[-20:],
        }
        return self._messaging(conversation, event, from_consumer)

    def _upsert(self, conversation: Conversation) -> EventRecord:
        conversation.updates += 1
        updated = conversation.clock_ms
        state = "OPEN" if conversation.updates < 6 or self.rng.random() < 0.8 else "CLOSE"
        participants = [
            {"id": conversation.participant_id, "role": "CONSUMER"},
            {"id": conversation.agent_id, "role": "ASSIGNED_AGENT"},
        ]
        payload = {
            "type": "UPSERT",
            "result": {
                "convId": conversation.conversation_id,
                "effectiveTTR": -1,
                "conversationDetails": {
                    "skillId": str(self.rng.choice((-1, 1_234_567, 7_654_321))),
                    "participants": participants,
                    "dialogs": [
                        {
                            "dialogId": conversation.conversation_id,
                            "participantsDetails": [{**p, "state": "ACTIVE"} for p in participants],
                            "dialogType": "MAIN",
                            "channelType": "MESSAGING",
                            "state": state,
                            "creationTs": conversation.start_ts,
                            "metaDataLastUpdateTs": updated,
                        }
                    ],
                    "brandId": ACCOUNT_ID,
                    "state": state,
                    "stage": state,
                    "startTs": conversation.start_ts,
                    "metaDataLastUpdateTs": updated,
                    "ttr": {"ttrType": "NORMAL", "value": 3600},
                },
            },
        }
        return EventRecord(
            received_at=0.0,
            account_id=ACCOUNT_ID,
            consumer_id=conversation.consumer_id,
            session_id=conversation.session_id,
            kind="conversation",
            type=CONVERSATION_TYPE,
            change_type="UPSERT",
            conversation_id=conversation.conversation_id,
            dialog_id=None,
            sequence=None,
            originator_id=None,
            server_ts=updated / 1000,
            dedupe_key=dedupe_digest(
                "conversation", conversation.conversation_id, "UPSERT", updated
            ),
            payload=orjson.dumps(payload).decode(),
        )


# -- the server ----------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    """The same server DSN pointing at database `name` (query such as ?host= kept)."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def admin(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def bench_database() -> AsyncIterator[tuple[DatabaseTarget, str]]:
    """A migrated database nobody else uses, and "url" or "embedded"."""
    settings = load_settings()
    if settings.database_url is not None:
        server_dsn = to_asyncpg_dsn(settings.database_url.reveal())
        name = f"recorder_bench_{os.getpid()}"
        await admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                    f"CREATE DATABASE {name}")
        say(f"scratch database {name} on the RECORDER_DATABASE_URL server")
        try:
            target = DatabaseTarget(dsn=with_database(server_dsn, name), embedded=False)
            await migrate.upgrade(target)
            yield target, "url"
        finally:
            await admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            say(f"dropped {name}")
        return
    state_dir = Path(tempfile.mkdtemp(prefix="recorder-bench-"))
    embedded = EmbeddedPostgres(state_dir)
    try:
        started = time.perf_counter()
        dsn = await embedded.start()
        say(f"embedded PostgreSQL in {state_dir} ({time.perf_counter() - started:.1f}s to start)")
        target = DatabaseTarget(dsn=dsn, embedded=True)
        await migrate.upgrade(target)
        yield target, "embedded"
    finally:
        await embedded.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


async def server_settings(dsn: str) -> dict[str, str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync', 'synchronous_commit', 'full_page_writes', 'server_version', "
            "'shared_buffers', 'wal_level')"
        )
    finally:
        await connection.close()
    return {row["name"]: row["setting"] for row in rows}


# -- phase 1: through the writer -----------------------------------------------------------------


class CorrectnessError(Exception):
    pass


@dataclasses.dataclass
class WriterRun:
    elapsed_s: float
    cpu_s: float
    latencies_s: list[float]
    batches: int
    stats: dict[str, int]


async def run_writer(
    target: DatabaseTarget,
    records: Sequence[EventRecord],
    *,
    queue_size: int,
    batch_size: int,
    batch_wait_ms: float,
    stall_s: float,
) -> WriterRun:
    total = len(records)
    writer = EventWriter(
        target, queue_size=queue_size, batch_size=batch_size, batch_wait_ms=batch_wait_ms
    )
    latencies: list[float] = []
    out_of_order: list[int] = []

    def on_commit(result: AppendResult) -> None:
        # One clock read per commit: every event in it became durable at the same moment.
        now = time.time()
        for position, record in result.stored:
            latencies.append(now - record.received_at)
            if records[position - 1] is not record:
                out_of_order.append(position)

    writer.add_listener(on_commit)

    async def produce() -> None:
        for record in records:
            record.received_at = time.time()
            await writer.put(record)

    stop = asyncio.Event()
    writer_task = asyncio.create_task(writer.run(stop))
    await asyncio.sleep(0)  # let run() mark the writer running before the first put

    cpu_started = time.process_time()
    started = time.perf_counter()
    producer = asyncio.create_task(produce())
    head_reached = asyncio.create_task(writer.wait_for_head(total))
    last_head, last_progress = 0, time.monotonic()
    next_report = started + 5
    try:
        while not head_reached.done():
            await asyncio.wait(
                {head_reached, writer_task, producer},
                timeout=1.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if writer_task.done():
                raise CorrectnessError(f"writer stopped early at head {writer.head}: "
                                       f"{writer_task.exception()!r}")
            if producer.done() and producer.exception() is not None:
                raise CorrectnessError(f"producer failed: {producer.exception()!r}")
            now = time.monotonic()
            if writer.head != last_head:
                last_head, last_progress = writer.head, now
            elif now - last_progress > stall_s:
                raise CorrectnessError(f"writer made no progress for {stall_s:.0f}s "
                                       f"at head {writer.head}")
            if time.perf_counter() >= next_report and not head_reached.done():
                next_report += 5
                say(f"  writer head {writer.head:,}/{total:,}")
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        stop.set()
        for task in (producer, head_reached):
            task.cancel()
        await asyncio.gather(producer, head_reached, return_exceptions=True)
        await asyncio.gather(writer_task, return_exceptions=True)

    if out_of_order:
        raise CorrectnessError(
            f"{len(out_of_order)} events stored out of produce order, first at {out_of_order[0]}"
        )
    stats = writer.stats
    if stats.stored != total or stats.duplicates or stats.quarantined:
        raise CorrectnessError(f"writer stats do not add up: {stats}")
    return WriterRun(
        elapsed_s=elapsed,
        cpu_s=cpu,
        latencies_s=latencies,
        batches=stats.batches,
        stats=dataclasses.asdict(stats),
    )


async def run_paced(
    target: DatabaseTarget, records: Sequence[EventRecord], *, rate: float, batch_size: int,
    batch_wait_ms: float,
) -> list[float]:
    """Open loop: offer events at a fixed rate, as sockets would, and time each to its commit.

    Each event's clock starts when it is due, not when it is sent, so a stalled writer shows up
    in the figures instead of slowing the offered load (no coordinated omission).
    """
    writer = EventWriter(target, batch_size=batch_size, batch_wait_ms=batch_wait_ms)
    latencies: list[float] = []

    def on_commit(result: AppendResult) -> None:
        now = time.time()
        latencies.extend(now - record.received_at for _, record in result.stored)

    writer.add_listener(on_commit)
    stop = asyncio.Event()
    writer_task = asyncio.create_task(writer.run(stop))
    await asyncio.sleep(0)
    start_wall, start_mono = time.time(), time.monotonic()
    head_before = writer.head
    try:
        for index, record in enumerate(records):
            due = index / rate
            ahead = start_mono + due - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            record.received_at = start_wall + due
            await writer.put(record)
        await asyncio.wait_for(writer.wait_for_head(head_before + len(records)), 60)
    finally:
        stop.set()
        await asyncio.gather(writer_task, return_exceptions=True)
    if len(latencies) != len(records):
        raise CorrectnessError(f"paced run stored {len(latencies)} of {len(records)} events")
    return latencies


async def verify_log(dsn: str, records: Sequence[EventRecord]) -> None:
    total = len(records)
    connection = await asyncpg.connect(dsn)
    try:
        count, low, high = await connection.fetchrow(
            "SELECT count(*), min(position), max(position) FROM events"
        )
        head = await connection.fetchval("SELECT position FROM log_head WHERE id = 1")
        keys = await connection.fetch("SELECT dedupe_key FROM events ORDER BY position")
    finally:
        await connection.close()
    # position is the primary key, so count = max - min + 1 means no hole and no repeat.
    if (count, low, high, head) != (total, 1, total, total):
        raise CorrectnessError(
            f"log not contiguous 1..{total}: count={count} min={low} max={high} head={head}"
        )
    mismatched = sum(
        1 for row, record in zip(keys, records, strict=True)
        if row["dedupe_key"] != record.dedupe_key
    )
    if mismatched:
        raise CorrectnessError(f"{mismatched} positions hold another event than the one produced")


# -- phase 2: raw COPY baseline ------------------------------------------------------------------


def copy_rows(records: Sequence[EventRecord], first: int = 1) -> list[tuple[object, ...]]:
    """Rows for `events` at positions first.., in the binary COPY's Python types."""
    utc = dt.UTC
    return [
        (
            position,
            dt.datetime.fromtimestamp(r.received_at, utc),
            r.account_id, r.consumer_id, r.session_id, r.kind, r.type, r.change_type,
            r.conversation_id, r.dialog_id, r.sequence, r.originator_id,
            None if r.server_ts is None else dt.datetime.fromtimestamp(r.server_ts, utc),
            r.dedupe_key,
            r.payload,  # asyncpg's default jsonb codec takes the JSON text as str
        )
        for position, r in enumerate(records, start=first)
    ]


async def run_copy(dsn: str, rows: Sequence[tuple[object, ...]], chunk: int) -> float:
    connection = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "on"})
    try:
        # INCLUDING ALL brings the primary key, the unique dedupe index, the
        # (conversation_id, position) index, the BRIN, the checks and recorded_at's default.
        await connection.execute("DROP TABLE IF EXISTS bench_copy")
        await connection.execute("CREATE TABLE bench_copy (LIKE events INCLUDING ALL)")
        started = time.perf_counter()
        for offset in range(0, len(rows), chunk):
            async with connection.transaction():
                await connection.copy_records_to_table(
                    "bench_copy", records=rows[offset : offset + chunk], columns=COPY_COLUMNS
                )
        elapsed = time.perf_counter() - started
        count = await connection.fetchval("SELECT count(*) FROM bench_copy")
        if count != len(rows):
            raise CorrectnessError(f"bench_copy holds {count} rows, expected {len(rows)}")
        await connection.execute("DROP TABLE bench_copy")
    finally:
        await connection.close()
    return elapsed


# -- main ----------------------------------------------------------------------------------------


def percentile_ms(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


async def bench(args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    workload = Workload(args.seed, args.conversations, args.identities)
    records = workload.events(args.events)
    mean_payload = sum(len(r.payload.encode()) for r in records) / len(records)
    kinds = collections.Counter(r.change_type or r.kind for r in records)
    say(f"built {len(records):,} events over {args.conversations:,} conversations in "
        f"{time.perf_counter() - started:.1f}s; mean payload {mean_payload:.0f} bytes")
    say(f"  mix: {dict(kinds.most_common())}")

    async with bench_database() as (target, database):
        settings = await server_settings(target.dsn)
        say(f"server {settings}")

        say(f"phase 1: EventWriter, batch_size={args.batch_size}, queue_size={args.queue_size}")
        run = await run_writer(
            target, records, queue_size=args.queue_size, batch_size=args.batch_size,
            batch_wait_ms=args.batch_wait_ms, stall_s=args.stall_s,
        )
        await verify_log(target.dsn, records)
        events_per_s = len(records) / run.elapsed_s
        p50, p99 = percentile_ms(run.latencies_s, 0.50), percentile_ms(run.latencies_s, 0.99)
        say(f"  {events_per_s:,.0f} events/s ({run.elapsed_s:.2f}s, {run.batches:,} batches, "
            f"mean {len(records) / run.batches:.0f} events/batch, "
            f"client CPU {run.cpu_s:.2f}s = {run.cpu_s / run.elapsed_s:.0%} of wall)")
        say(f"  commit latency p50 {p50} ms, p99 {p99} ms. This is a closed-loop max-throughput "
            "run: the producer keeps the queue full, so latency includes time queued behind "
            "earlier batches, not only the commit itself.")
        say("  log verified: positions 1..N contiguous, log_head = N, stored in produce order")

        paced_records = workload.events(int(args.paced_rate * args.paced_seconds))
        say(f"phase 2: open loop at {args.paced_rate:,.0f} events/s for {args.paced_seconds:.0f}s")
        paced = await run_paced(
            target, paced_records, rate=args.paced_rate, batch_size=args.batch_size,
            batch_wait_ms=args.batch_wait_ms,
        )
        paced_p50, paced_p99 = percentile_ms(paced, 0.50), percentile_ms(paced, 0.99)
        paced_max = round(max(paced) * 1000, 2)
        say(f"  frame offered -> committed: p50 {paced_p50} ms, p99 {paced_p99} ms, "
            f"max {paced_max} ms")

        rows = copy_rows(records)
        say(f"phase 3: COPY into bench_copy (LIKE events INCLUDING ALL), "
            f"{args.copy_chunk:,} rows per transaction, synchronous_commit on")
        copy_elapsed = await run_copy(target.dsn, rows, args.copy_chunk)
        del rows
        copy_events_per_s = len(records) / copy_elapsed
        ratio = events_per_s / copy_events_per_s
        say(f"  {copy_events_per_s:,.0f} events/s ({copy_elapsed:.2f}s)")

    within = events_per_s >= BUDGET["events_per_s_min"] and ratio >= BUDGET["ratio_min"]
    say(f"ratio {ratio:.3f} = writer {events_per_s:,.0f} events/s / raw COPY "
        f"{copy_events_per_s:,.0f} events/s, same run (budget: ratio >= {BUDGET['ratio_min']}, "
        f"writer >= {BUDGET['events_per_s_min']:,} events/s)")
    say(f"total {time.perf_counter() - started:.1f}s; within budget: {within}")
    return {
        "events_per_s": round(events_per_s, 1),
        "copy_events_per_s": round(copy_events_per_s, 1),
        "ratio": round(ratio, 3),
        "p50_commit_ms": paced_p50,
        "p99_commit_ms": paced_p99,
        "max_commit_ms": paced_max,
        "paced_rate": args.paced_rate,
        "closed_loop_p50_commit_ms": p50,
        "closed_loop_p99_commit_ms": p99,
        "events": len(records),
        "mean_payload_bytes": round(mean_payload, 1),
        "batch_size": args.batch_size,
        "queue_size": args.queue_size,
        "batch_wait_ms": args.batch_wait_ms,
        "batches": run.batches,
        "writer_stats": run.stats,
        "writer_elapsed_s": round(run.elapsed_s, 3),
        "writer_client_cpu_s": round(run.cpu_s, 3),
        "copy_elapsed_s": round(copy_elapsed, 3),
        "copy_chunk": args.copy_chunk,
        "conversations": args.conversations,
        "seed": args.seed,
        "database": database,
        "server": settings,
        "budget": BUDGET,
        "within_budget": within,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--queue-size", type=int, default=10_000)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=4, help="consumer identities")
    parser.add_argument("--copy-chunk", type=int, default=5_000)
    parser.add_argument("--paced-rate", type=float, default=5_000.0,
                        help="events/s offered in the open-loop latency phase")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--stall-s", type=float, default=60.0,
                        help="fail if the writer's head does not move for this long")
    args = parser.parse_args(argv)
    if args.events <= 0 or args.batch_size <= 0 or args.conversations <= 0:
        parser.error("--events, --batch-size and --conversations must be positive")
    return args


def report(run: Callable[[], dict[str, object]]) -> int:
    """Run a bench: its JSON summary is the last line; a correctness failure exits 1."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run()
    except CorrectnessError as exc:
        say(f"FAILED: {exc}")
        return 1
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: asyncio.run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
