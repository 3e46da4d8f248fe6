"""recorder's UMS client against the simulator, wired as the daemon wires it.

The connection hands every frame to one FrameHandler, here `MemorySink` (the daemon's is the
recording sink); the sink tells the `Subscriber` which dialogs each UPSERT names, and the
subscriber reads its cursors from the sink's memory, as the daemon's reads the cursor store.
Short client timers (FAST), the account and the simulator's truth live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp

from recorder.simulator import Simulator
from recorder.ums import frames, payload
from recorder.ums.client import ClientSettings, ConsumerClient, SessionLedger
from recorder.ums.connection import UmsConnection
from recorder.ums.frames import MalformedFrame, Notification
from recorder.ums.subscriptions import Subscriber
from recorder.ums.tokens import StaticTokenSource, TokenSource

ACCOUNT = "71234567"

# Short timers so faults play out in a test's time; the protocol's 1 s after a 429 stays.
FAST = ClientSettings(
    request_timeout=3.0,
    clock_interval=0.5,
    clock_timeout=1.0,
    backoff_initial=0.05,
    backoff_max=0.5,
    stable_after=30.0,
    renew_before=1.0,
    request_rate=500.0,
    request_burst=100,
    server_error_delays=(0.05, 0.1, 0.15),
)



def truth(sim: Simulator, consumer: str) -> set[tuple[str, int]]:
    """Every sequenced event the simulator stored for the consumer's dialogs."""
    return {
        (dialog_id, int(event["sequence"]))
        for dialog_id in sim.dialog_ids(consumer)
        for event in sim.stored_events(dialog_id)
    }



class MemorySink:
    """A FrameHandler that keeps messaging events by (dialog, sequence) in memory and serves
    their cursors, as the event log does."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, int], dict[str, Any]] = {}
        self.duplicates = 0
        self.chat_states: list[dict[str, Any]] = []
        self.conversation_changes: list[dict[str, Any]] = []
        self.notification_types: set[str] = set()
        self.malformed_frames: list[MalformedFrame] = []
        self.other: list[Any] = []
        self.sessions: set[str] = set()
        #: told the dialogs of each UPSERT, as the recording sink tells it
        self.follower: Subscriber | None = None

    async def on_notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None:
        self.sessions.add(connection.session_key)
        self.notification_types.add(notification.type)
        if frames.is_conversation_notification(notification):
            for change in notification.changes:
                self.conversation_changes.append(change)
                kind, conversation_id, _, _, details = payload.read_conversation_change(change)
                if kind == "UPSERT" and conversation_id and self.follower is not None:
                    self.follower.follow(connection, conversation_id, payload.dialog_ids(details))
            return
        for change in notification.changes:
            sequence = payload.change_sequence(change)
            dialog_id = payload.change_dialog_id(change)
            if sequence is None or dialog_id is None:
                self.chat_states.append(change)
            elif (dialog_id, sequence) in self.events:
                self.duplicates += 1
            else:
                self.events[(dialog_id, sequence)] = change

    async def on_malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None:
        self.malformed_frames.append(error)

    async def on_other(self, connection: UmsConnection, frame: Any, received_at: float) -> None:
        self.other.append(frame)

    # -- the subscriber's Cursors -----------------------------------------------------------------

    async def refresh(self, consumer_id: str) -> None:
        pass

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        return {}

    def closed_conversations(self, consumer_id: str) -> set[str]:
        return set()

    def last_metadata_ms(self, consumer_id: str) -> int | None:
        return None

    def forget(self, dialog_ids: Iterable[str]) -> None:
        pass

    def cursor(self, dialog_id: str) -> int | None:
        sequences = [seq for (dialog, seq) in self.events if dialog == dialog_id]
        return max(sequences) if sequences else None


async def converged(sim: Simulator, consumer: str, sink: MemorySink, within_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        expected = truth(sim, consumer)
        missing = expected - set(sink.events)
        if expected and not missing:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(missing)} of {len(expected)} events never arrived")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def recording(
    sim: Simulator,
    tokens: TokenSource,
    *,
    settings: ClientSettings = FAST,
    sink: MemorySink | None = None,
    ledger: SessionLedger | None = None,
) -> AsyncIterator[tuple[ConsumerClient, MemorySink, Subscriber]]:
    sink = sink or MemorySink()

    async def ums_url() -> str:
        return sim.ws_url

    async with aiohttp.ClientSession() as http:
        subscriber = Subscriber(sink, settings)
        sink.follower = subscriber
        client = ConsumerClient(
            account=ACCOUNT, tokens=tokens, ums_url=ums_url, session=http,
            handler=sink, sessions=subscriber, ledger=ledger, settings=settings,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            yield client, sink, subscriber
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


def static_tokens(sim: Simulator, consumer: str) -> StaticTokenSource:
    return StaticTokenSource("test", sim.token_for(consumer))


async def connected(client: ConsumerClient, within_s: float = 10) -> UmsConnection:
    deadline = asyncio.get_running_loop().time() + within_s
    while client.connection is None or client.connection.closed:
        assert asyncio.get_running_loop().time() < deadline, "client never connected"
        await asyncio.sleep(0.02)
    return client.connection
