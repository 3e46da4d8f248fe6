"""Subscriber against the simulator over a real socket: what it subscribes, from where, and what
it does when a subscription fails. What it sent is read from the simulator's own journal.

The frame handler below does what the recording sink does, minus the writer: it reads each
notification with `record_notification` (the real discovery of the dialogs an UPSERT names),
keeps sequenced events in memory as the stored log, and tells the subscriber to follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import pytest

from recorder.eventlog.recording import record_notification
from recorder.simulator import ReceivedFrame, Simulator
from recorder.ums import frames
from recorder.ums.client import ClientSettings, ConsumerClient
from recorder.ums.connection import UmsConnection
from recorder.ums.frames import MalformedFrame, Notification
from recorder.ums.subscriptions import SNAPSHOT_MARGIN_MS, Subscriber
from recorder.ums.tokens import StaticTokenSource
from tests.helpers import wait_until

ACCOUNT = "71234567"
FAST = ClientSettings(request_timeout=3.0, clock_interval=60.0, backoff_initial=0.05,
                      backoff_max=0.5, request_rate=500.0, request_burst=100)


class Log:
    """The stored log as the subscriber sees it: cursors, and dialogs known from before."""

    def __init__(self, known: dict[str, str] | None = None,
                 cursors: dict[str, int] | None = None, *, discover: bool = True) -> None:
        self.known = known or {}
        self.discover = discover  # False: UPSERTs are not passed on; a test calls follow
        self.stored: dict[str, int] = dict(cursors or {})  # dialog -> last stored sequence
        self.events: set[tuple[str, int]] = set()
        self.follower: Subscriber | None = None
        self.closed_known: set[str] = set()  # known conversations the store calls closed
        self.metadata_ms: int | None = None
        self.forgotten: set[str] = set()

    # Cursors, for the subscriber
    def cursor(self, dialog_id: str) -> int | None:
        return self.stored.get(dialog_id)

    async def refresh(self, consumer_id: str) -> None:
        pass

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        return {d: c for d, c in self.known.items() if d not in self.forgotten}

    def closed_conversations(self, consumer_id: str) -> set[str]:
        return set(self.closed_known)

    def last_metadata_ms(self, consumer_id: str) -> int | None:
        return self.metadata_ms

    def forget(self, dialog_ids: Iterable[str]) -> None:
        self.forgotten.update(dialog_ids)

    # FrameHandler, for the connection
    async def on_notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None:
        records, learned = record_notification(
            notification, account_id=ACCOUNT, consumer_id=connection.consumer_id,
            session_id=str(connection.session_id), received_at=received_at)
        for record in records:
            if record.dialog_id is not None and record.sequence is not None:
                self.events.add((record.dialog_id, record.sequence))
                self.stored[record.dialog_id] = max(
                    record.sequence, self.stored.get(record.dialog_id, -1))
        assert self.follower is not None
        for found in learned if self.discover else []:
            self.follower.follow(connection, found.conversation_id, found.dialog_ids,
                                 closed=found.closed, updated_ms=found.updated_ms)

    async def on_malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None:
        raise AssertionError(f"malformed frame: {error}")

    async def on_other(self, connection: UmsConnection, frame: Any, received_at: float) -> None:
        raise AssertionError(f"unexpected frame: {frame}")


@contextlib.asynccontextmanager
async def recording(
    sim: Simulator, consumer: str, log: Log, settings: ClientSettings = FAST, *,
    subscriber: Subscriber | None = None,
) -> AsyncIterator[tuple[ConsumerClient, Subscriber]]:
    subscriber = subscriber or Subscriber(log, settings)
    log.follower = subscriber

    async def ums_url() -> str:
        return sim.ws_url

    async with aiohttp.ClientSession() as http:
        client = ConsumerClient(
            account=ACCOUNT, tokens=StaticTokenSource("test", sim.token_for(consumer)),
            ums_url=ums_url, session=http, handler=log, sessions=subscriber, settings=settings)
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            yield client, subscriber
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


def truth(sim: Simulator, consumer: str) -> set[tuple[str, int]]:
    return {(d, int(e["sequence"])) for d in sim.dialog_ids(consumer) for e in sim.stored_events(d)}


async def recorded(sim: Simulator, consumer: str, log: Log) -> None:
    await wait_until(lambda: bool(truth(sim, consumer)) and truth(sim, consumer) <= log.events,
                     within_s=20)


def received(sim: Simulator, *types: str, connection: int | None = None) -> list[ReceivedFrame]:
    """Requests of these types the simulator received, in order, optionally on one connection."""
    return [r for r in sim.received
            if isinstance(r.frame, dict) and r.frame.get("type") in types
            and connection in (None, r.connection_id)]


def requests(sim: Simulator, *types: str, connection: int | None = None) -> list[dict[str, Any]]:
    return [r.frame for r in received(sim, *types, connection=connection)]


def dialog_subscriptions(sim: Simulator, connection: int | None = None) -> dict[str, list[Any]]:
    """dialog id -> [(conversationId, fromSeq), ...] of each SubscribeMessagingEvents."""
    found: dict[str, list[Any]] = {}
    for frame in requests(sim, frames.SUBSCRIBE_MESSAGING_EVENTS, connection=connection):
        body = frame["body"]
        found.setdefault(body["dialogId"], []).append((body["conversationId"], body["fromSeq"]))
    return found


async def test_on_connect_conversations_first_then_every_known_dialog_from_its_cursor() -> None:
    async with Simulator(account=ACCOUNT, seed=31, gap_probability=0, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        resumed = sim.create_conversation(consumer)
        for n in range(6):
            sim.consumer_message(resumed, f"resumed {n}")
        sim.close_conversation(resumed, survey=False)  # one open conversation at a time
        fresh = sim.create_conversation(consumer)
        sim.consumer_message(fresh, "fresh")
        log = Log(known={resumed: resumed, fresh: fresh}, cursors={resumed: 3})
        wanted = {(d, s) for d, s in truth(sim, consumer) if d != resumed or s > 3}
        async with recording(sim, consumer, log) as (client, _):
            await wait_until(lambda: log.events >= wanted, within_s=20)
        assert log.events == wanted, "nothing at or below the stored cursor is replayed"
        subscribing = requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS,
                               frames.SUBSCRIBE_MESSAGING_EVENTS)
        assert subscribing[0]["type"] == frames.SUBSCRIBE_EX_CONVERSATIONS
        assert subscribing[0]["body"] == {"minLastUpdatedTime": 0, "convState": ["OPEN", "CLOSE"],
                                          "stage": ["OPEN", "CLOSE"]}
        assert dialog_subscriptions(sim) == {resumed: [(resumed, 4)], fresh: [(fresh, 0)]}, (
            "once per dialog, though the snapshot's UPSERTs name them again"
        )
        assert client.connections == 1


async def test_dialogs_named_by_upserts_are_followed_including_the_survey() -> None:
    async with Simulator(account=ACCOUNT, seed=32, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        log = Log()
        async with recording(sim, consumer, log) as (_, subscriber):
            await wait_until(lambda: bool(requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)))
            conversation = sim.create_conversation(consumer)
            sim.consumer_message(conversation, "hello")
            await recorded(sim, consumer, log)
            survey = sim.close_conversation(conversation, survey=True)
            assert survey is not None
            sim.survey_question(survey)
            await recorded(sim, consumer, log)
            assert {d for d, _ in log.events} == {conversation, survey}
            assert subscriber.dialogs == {conversation: conversation, survey: conversation}
            assert dialog_subscriptions(sim) == {
                conversation: [(conversation, 0)], survey: [(conversation, 0)],
            }, "each new dialog once, from its start"

            sim.drop_connections()  # the next session subscribes both again, from the cursors
            await wait_until(lambda: len(requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)) == 2)
            again = received(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)[1].connection_id
            await wait_until(lambda: len(dialog_subscriptions(sim, again)) == 2, within_s=20)
        assert dialog_subscriptions(sim, again) == {
            conversation: [(conversation, log.stored[conversation] + 1)],
            survey: [(conversation, log.stored[survey] + 1)],
        }


async def test_the_main_dialog_is_followed_even_when_an_upsert_does_not_list_it() -> None:
    async with Simulator(account=ACCOUNT, seed=35, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        log = Log(discover=False)  # the simulator's UPSERTs always list the MAIN dialog
        async with recording(sim, consumer, log) as (client, subscriber):
            await wait_until(lambda: bool(requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)))
            assert client.connection is not None
            conversation = sim.create_conversation(consumer)
            subscriber.follow(client.connection, conversation, [])  # as for an older payload
            sim.consumer_message(conversation, "hello")
            await recorded(sim, consumer, log)
        assert dialog_subscriptions(sim) == {conversation: [(conversation, 0)]}


async def test_a_refused_dialog_is_logged_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="recorder")
    async with Simulator(account=ACCOUNT, seed=33, auto_reply=False) as sim:
        consumer, stranger = sim.new_consumer(), sim.new_consumer()
        foreign = sim.create_conversation(stranger)  # not this consumer's: answered 400
        log = Log(known={foreign: foreign})
        async with recording(sim, consumer, log) as (client, subscriber):
            await wait_until(lambda: subscriber.subscription_errors == 1, within_s=20)
            mine = sim.create_conversation(consumer)  # the session carries on recording
            sim.consumer_message(mine, "still recording")
            await recorded(sim, consumer, log)
        assert dialog_subscriptions(sim)[foreign] == [(foreign, 0)], "asked once, not again"
        assert client.connections == 1 and [c.reason for c in client.closes] == [
            "recorder stopping"]
        refused = [r for r in caplog.records if getattr(r, "event", None) == "ums.dialog.refused"]
        assert len(refused) == 1 and foreign in refused[0].getMessage()


async def test_a_dialog_subscription_that_times_out_starts_the_session_over() -> None:
    settings = dataclasses.replace(FAST, request_timeout=0.3)
    async with Simulator(account=ACCOUNT, seed=34, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        first = sim.create_conversation(consumer)
        sim.consumer_message(first, "before")
        log = Log()
        async with recording(sim, consumer, log, settings) as (client, subscriber):
            await recorded(sim, consumer, log)  # set up: both subscriptions answered
            sim.faults.response_delay_ms = 10_000  # from now on, no answer in time
            sim.close_conversation(first, survey=False)
            late = sim.create_conversation(consumer)
            sim.consumer_message(late, "subscribed too late")
            await wait_until(lambda: bool(client.closes), within_s=20)
            sim.faults.response_delay_ms = 0
            await recorded(sim, consumer, log)  # a new session subscribed it again
        close = client.closes[0]
        assert (close.code, close.reason, close.by_client) == (
            1011, "dialog subscription failed", True)
        assert subscriber.subscription_errors >= 1 and client.connections >= 2
        assert len(dialog_subscriptions(sim)[late]) >= 2


HISTORY = 50_000


class Clock:
    """The subscriber's clock, moved by the test (the grace window without waiting it out)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_long_history_costs_nothing_on_reconnect() -> None:
    """50,000 closed conversations behind one identity: the snapshot asks only for what
    changed since the newest metadata time stored (less the margin), the dialogs of a
    conversation closed longer than the grace window are let go of, and a reconnect
    subscribes the open dialogs alone."""
    start = 1_700_000_000_000
    async with Simulator(account=ACCOUNT, seed=36, gap_probability=0, auto_reply=False,
                         survey_enabled=False, clock_start_ms=start) as sim:
        consumer = sim.new_consumer()
        for n in range(HISTORY):
            old = sim.create_conversation(consumer)
            sim.consumer_message(old, f"old {n}")
            sim.close_conversation(old)
        sim.advance_clock(3600 * 1000)
        last = sim.create_conversation(consumer)  # the newest conversation the log holds
        sim.consumer_message(last, "last stored")
        sim.close_conversation(last)
        stored_until = sim.conversation(last)["metaDataLastUpdateTs"]
        sim.advance_clock(3600 * 1000)
        first = sim.create_conversation(consumer)
        sim.consumer_message(first, "open")
        log = Log()  # the store: recent cursors only, and the newest metadata time stored
        log.metadata_ms = stored_until
        clock = Clock()
        subscriber = Subscriber(log, FAST, closed_grace_s=600, clock=clock)
        async with recording(sim, consumer, log, subscriber=subscriber) as (client, _):
            await wait_until(lambda: {(first, 0), (last, 0)} <= log.events)
            snapshot = requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)[0]["body"]
            assert snapshot["minLastUpdatedTime"] == stored_until - SNAPSHOT_MARGIN_MS
            assert dialog_subscriptions(sim) == {first: [(first, 0)], last: [(last, 0)]}, (
                "the snapshot named the last stored conversation (within the margin) and the "
                "open one; none of the 50,000 before"
            )

            sim.close_conversation(first)  # closes: followed through the grace window
            await wait_until(lambda: first in subscriber.closed)
            second = sim.create_conversation(consumer)
            sim.consumer_message(second, "open")
            await wait_until(lambda: (second, 0) in log.events)
            sim.drop_connections()
            await wait_until(lambda: len(requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)) == 2)
            again = received(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)[1].connection_id
            await wait_until(lambda: len(dialog_subscriptions(sim, again)) == 3)
            assert set(dialog_subscriptions(sim, again)) == {last, first, second}, "in grace"

            clock.now += 601  # the grace window passes; the next UPSERT lets go of them
            sim.transfer_to_skill(second, "1284356711")
            await wait_until(lambda: subscriber.released == 2)
            assert client.connection is not None
            live = subscriber._subscribed[client.connection.session_key]
            assert live == {second}, "a long session holds no closed history either"
            sim.drop_connections()
            await wait_until(lambda: len(requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)) == 3)
            third = received(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)[2].connection_id
            await wait_until(lambda: bool(dialog_subscriptions(sim, third)))
            await asyncio.sleep(0.3)  # anything else would have been asked for by now
            assert dialog_subscriptions(sim, third) == {second: [(second, log.stored[second] + 1)]}
            snapshot = requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)[2]["body"]
            assert snapshot["minLastUpdatedTime"] == sim.conversation(second)[
                "metaDataLastUpdateTs"] - SNAPSHOT_MARGIN_MS, "moves with what this process saw"
        assert subscriber.dialogs == {second: second}
        assert log.forgotten == {last, first} and subscriber.released == 2
        assert client.connections == 3


async def test_a_conversation_closed_while_the_socket_was_down_is_recorded_to_its_end() -> None:
    start = 1_700_000_000_000
    async with Simulator(account=ACCOUNT, seed=37, gap_probability=0, auto_reply=False,
                         survey_enabled=False, clock_start_ms=start) as sim:
        consumer = sim.new_consumer()
        conversation = sim.create_conversation(consumer)
        sim.consumer_message(conversation, "before")
        log = Log()
        async with recording(sim, consumer, log) as (_, subscriber):
            await recorded(sim, consumer, log)
            seen_ms = subscriber.last_metadata_ms[consumer]
        # Down: the conversation goes on and closes; an hour passes. The next process knows
        # the dialog from the store (open when it stopped) and the newest metadata time.
        for n in range(5):
            sim.agent_message(conversation, f"while down {n}")
        sim.close_conversation(conversation)
        sim.advance_clock(3600 * 1000)
        log.known = {conversation: conversation}
        log.metadata_ms = seen_ms
        async with recording(sim, consumer, log) as (_, subscriber):
            await recorded(sim, consumer, log)
            assert conversation in subscriber.closed, "the snapshot said it closed"
        assert log.events == truth(sim, consumer)
        snapshot = requests(sim, frames.SUBSCRIBE_EX_CONVERSATIONS)[1]["body"]
        assert snapshot["minLastUpdatedTime"] == seen_ms - SNAPSHOT_MARGIN_MS > 0
