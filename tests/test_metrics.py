"""Prometheus metrics: counters fed by the writer's commits, gauges sampled at render time."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recorder.db.target import DatabaseTarget
from recorder.eventlog.appender import AppendResult
from recorder.eventlog.records import EventRecord, QuarantinedFrame, dedupe_digest
from recorder.metrics import Metrics
from recorder.simulator import Faults, Simulator
from recorder.ums.client import ConsumerClient
from recorder.ums.connection import CloseInfo
from recorder.ums.subscriptions import Subscriber
from recorder.ums.tokens import StaticTokenSource
from tests.faults.harness import (
    ACCOUNT,
    head_reaches,
    log_head,
    poll,
    running_daemon,
    settings_for,
    static_identities,
)
from tests.helpers import message_event
from tests.ums.harness import FAST, MemorySink

UUID_SHAPED = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, by (sample name, sorted labels)."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def conversation_event(conversation: str, updated_ms: int, *, age_s: float = 0.0) -> EventRecord:
    return EventRecord(
        received_at=time.time() - age_s, account_id=ACCOUNT, consumer_id="consumer-1",
        session_id="s", kind="conversation", type="cqm.ExConversationChangeNotification",
        change_type="UPSERT", conversation_id=conversation, dialog_id=None, sequence=None,
        originator_id=None, server_ts=updated_ms / 1000,
        dedupe_key=dedupe_digest("conversation", conversation, "UPSERT", updated_ms),
        payload="{}",
    )


def aged(event: EventRecord, age_s: float) -> EventRecord:
    return dataclasses.replace(event, received_at=time.time() - age_s)


def test_commits_count_events_duplicates_quarantine_and_batches() -> None:
    metrics = Metrics()
    conv = "3f2b6c1e-1a2b-4c3d-8e9f-0123456789ab"
    first = AppendResult(
        stored=[
            (1, aged(message_event(conv, 1), 0.003)),
            (2, aged(message_event(conv, 2), 0.003)),
            (3, conversation_event(conv, 1000, age_s=2.0)),
        ],
        duplicates=[message_event(conv, 1)],
        head=3,
    )
    second = AppendResult(
        stored=[(4, aged(message_event(conv, 3), 0.003))],
        duplicates=[conversation_event(conv, 1000)],
        quarantined=[QuarantinedFrame(received_at=time.time(), raw=b"nope", error="bad")],
        head=4,
    )
    metrics.observe_commit(first)
    metrics.observe_commit(second)
    metrics.observe_commit(AppendResult(head=4))  # an empty commit is not a batch

    got = samples(metrics)
    assert got[("recorder_events_stored_total", (("kind", "messaging"),))] == 3
    assert got[("recorder_events_stored_total", (("kind", "conversation"),))] == 1
    assert got[("recorder_events_stored_total", (("kind", "other"),))] == 0
    assert got[("recorder_duplicates_dropped_total", (("kind", "messaging"),))] == 1
    assert got[("recorder_duplicates_dropped_total", (("kind", "conversation"),))] == 1
    assert got[("recorder_frames_quarantined_total", ())] == 1
    assert got[("recorder_log_head", ())] == 4
    # Batches of 4 and 3 items (stored + duplicates + quarantined).
    assert got[("recorder_writer_batch_events_count", ())] == 2
    assert got[("recorder_writer_batch_events_sum", ())] == 7
    assert got[("recorder_writer_batch_events_bucket", (("le", "2.0"),))] == 0
    assert got[("recorder_writer_batch_events_bucket", (("le", "5.0"),))] == 2
    # One latency per stored event: three about 3 ms old, one 2 s old.
    assert got[("recorder_commit_latency_seconds_count", ())] == 4
    assert got[("recorder_commit_latency_seconds_bucket", (("le", "1.0"),))] == 3
    assert got[("recorder_commit_latency_seconds_bucket", (("le", "2.5"),))] == 4
    assert 2.0 <= got[("recorder_commit_latency_seconds_sum", ())] < 3.0
    assert got[("recorder_last_export_timestamp_seconds", ())] == 0
    metrics.mark_export(1_700_000_000.5)
    assert value(metrics, "recorder_last_export_timestamp_seconds") == 1_700_000_000.5


def test_registries_are_separate() -> None:
    one, two = Metrics(), Metrics()
    one.observe_commit(AppendResult(stored=[(1, message_event("c", 1))], head=1))
    assert value(one, "recorder_events_stored_total", kind="messaging") == 1
    assert value(two, "recorder_events_stored_total", kind="messaging") == 0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_closes_and_429s_are_counted_once_across_renders(
    http: aiohttp.ClientSession,
) -> None:
    async def ums_url() -> str:
        return "ws://127.0.0.1:1"

    client = ConsumerClient(
        account=ACCOUNT, tokens=StaticTokenSource("c0", "not-a-jwt"), ums_url=ums_url,
        session=http, handler=MemorySink(), sessions=Subscriber(MemorySink(), FAST),
        settings=FAST,
    )
    metrics = Metrics()
    metrics.watch_client(client)
    assert value(metrics, "recorder_identity_connected", identity="c0") == 0
    client.closes += [CloseInfo(1011, "restart"), CloseInfo(None, "", error="reset")]
    client.rate_limited = 2
    assert value(metrics, "recorder_reconnects_total", code="1011") == 1
    client.closes.append(CloseInfo(1011, "restart"))
    client.rate_limited = 3
    got = samples(metrics)
    assert got[("recorder_reconnects_total", (("code", "1011"),))] == 2
    assert got[("recorder_reconnects_total", (("code", "none"),))] == 1
    assert got[("recorder_rate_limited_total", ())] == 3
    again = samples(metrics)  # nothing new: nothing more counted
    assert again[("recorder_reconnects_total", (("code", "1011"),))] == 2
    assert again[("recorder_reconnects_total", (("code", "none"),))] == 1
    assert again[("recorder_rate_limited_total", ())] == 3


@pytest.mark.slow
async def test_daemon_metrics_against_the_simulator(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=7) as sim:
        consumers = [sim.new_consumer() for _ in range(2)]
        settings = settings_for(sim, static_identities(sim, consumers))
        tokens = [sim.token_for(sub) for sub in consumers]
        async with running_daemon(settings, database) as daemon:
            metrics = Metrics()
            metrics.attach(daemon.app.writer, daemon.app.projector, daemon.app.clients)
            await sim.start_traffic(consumers, 2, rate=400, total_events=300)
            await poll(head_reaches(db, 100), "traffic never reached the log")
            sim.faults = Faults(reject_every=3)
            await sim.close_connections(1011, "simulated restart")
            await poll(lambda: all(c.connections >= 2 and c.connection is not None
                                   and not c.connection.closed for c in daemon.app.clients),
                       "the daemon never reconnected")
            await poll(lambda: sum(c.rate_limited for c in daemon.app.clients) > 0,
                       "no request met a 429")
            sim.faults = Faults()
            head = await log_head(db)
            await poll(lambda: daemon.app.writer.head >= head, "the writer lags the log")
            await poll(lambda: daemon.app.projector.position >= head, "projection lags")

            body, _ = metrics.render()
            text = body.decode()
            got = samples(metrics)
            assert got[("recorder_events_stored_total", (("kind", "messaging"),))] > 0
            assert got[("recorder_events_stored_total", (("kind", "conversation"),))] > 0
            assert got[("recorder_log_head", ())] == daemon.app.writer.head
            assert got[("recorder_commit_latency_seconds_count", ())] > 0
            assert got[("recorder_writer_batch_events_count", ())] > 0
            assert got[("recorder_reconnects_total", (("code", "1011"),))] >= 2
            assert got[("recorder_rate_limited_total", ())] >= 1
            assert ("recorder_projection_lag_seconds", ()) in got
            for identity in ("c0", "c1"):
                assert got[("recorder_identity_connected", (("identity", identity),))] == 1
            await daemon.stop()

    label_values = {v for (_, labels) in got for (_, v) in labels}
    assert not [v for v in label_values if UUID_SHAPED.search(v)], label_values
    for conversation in {c for sub in consumers for c in sim.conversation_ids(sub)}:
        assert conversation not in text
    for sub, token in zip(consumers, tokens, strict=True):
        assert token not in text
        assert token.split(".")[1] not in text  # not even the claims part of the JWT
        assert sub not in text


async def test_followed_and_released_dialogs_per_identity(http: aiohttp.ClientSession) -> None:
    async def ums_url() -> str:
        return "ws://127.0.0.1:1"

    subscriber = Subscriber(MemorySink(), FAST)
    client = ConsumerClient(
        account=ACCOUNT, tokens=StaticTokenSource("c1", "not-a-jwt"), ums_url=ums_url,
        session=http, handler=MemorySink(), sessions=subscriber, settings=FAST,
    )
    metrics = Metrics()
    metrics.watch_client(client, subscriber)
    assert value(metrics, "recorder_identity_followed_dialogs", identity="c1") == 0
    assert value(metrics, "recorder_released_dialogs_total", identity="c1") == 0
    subscriber.dialogs.update({"d1": "c", "d2": "c", "d3": "e"})
    subscriber.released = 4
    assert value(metrics, "recorder_identity_followed_dialogs", identity="c1") == 3
    assert value(metrics, "recorder_released_dialogs_total", identity="c1") == 4
    del subscriber.dialogs["d3"]
    assert value(metrics, "recorder_identity_followed_dialogs", identity="c1") == 2
    assert value(metrics, "recorder_released_dialogs_total", identity="c1") == 4, "counted once"
