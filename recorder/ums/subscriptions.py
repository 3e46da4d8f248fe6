"""What a recording session subscribes to, and from where it resumes.

On every connect: `cqm.SubscribeExConversations` for conversations in both states and stages
updated since the newest conversation metadata time known for the identity minus
`SNAPSHOT_MARGIN_MS` (0 when none is known; protocol.md section 6.3, step 4), then
`ms.SubscribeMessagingEvents` for every followed dialog with `fromSeq = cursor + 1` (`fromSeq`
is inclusive; section 6.3), and 0 for dialogs never seen. Dialogs are learned from the
`dialogs[]` of each UPSERT, so POST_SURVEY dialogs are subscribed as they open: whoever reads
the UPSERTs (the recording sink, recorder.eventlog.recording) calls `Subscriber.follow` with
what it found. The subscriber never sees a frame itself. Subscriptions are sent from side
tasks: the reader must keep reading to see their replies.

Cost is bounded by what is open, not by history: the dialogs of a conversation whose stage
closed more than `closed_grace_s` ago (late receipts and survey answers come within it) are
dropped from memory and from the cursor store, and not subscribed again. A conversation that
closed while the socket was down is still recorded to its end: its metadata changed after the
snapshot's lower bound, so the snapshot names it and its dialogs are followed from their
cursors once more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from recorder.logs import event
from recorder.ums import frames
from recorder.ums.client import ClientSettings, request_with_retry
from recorder.ums.connection import (
    CloseInfo,
    ConnectionClosed,
    RequestTimeout,
    ResponseError,
    UmsConnection,
)

log = logging.getLogger(__name__)

#: The snapshot asks for conversations updated since the newest metadata time known, less
#: this: UMS timestamps are server-side, so this covers updates committed out of order
#: around that time, not clock skew (minLastUpdatedTime in epoch ms: UNCONFIRMED, as assumed
#: throughout protocol.md).
SNAPSHOT_MARGIN_MS = 15 * 60 * 1000
#: How often, at most, `follow` looks for closed conversations to let go of.
PRUNE_INTERVAL_S = 30.0


class Cursors(Protocol):
    """Where a dialog resumes: the last *stored* sequence (recorder.eventlog.recording's
    CursorStore)."""

    def cursor(self, dialog_id: str) -> int | None:
        """The last stored sequence of a dialog; None: nothing stored yet."""

    async def refresh(self, consumer_id: str) -> None:
        """Catch up with what the database holds for this consumer (a session opens)."""

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        """Dialogs (id -> conversation id) to follow even if no snapshot names them."""

    def closed_conversations(self, consumer_id: str) -> set[str]:
        """Of the conversations of `known_dialogs`, those not known to be open: their grace
        window starts now, unless an UPSERT says otherwise."""

    def last_metadata_ms(self, consumer_id: str) -> int | None:
        """The newest conversation metadata time stored for this consumer; None: none."""

    def forget(self, dialog_ids: Iterable[str]) -> None:
        """These dialogs are no longer followed: their cursors need not stay in memory."""


class Subscriber:
    """The SessionHandler that keeps every dialog of every open (or lately closed)
    conversation subscribed."""

    def __init__(self, cursors: Cursors, settings: ClientSettings | None = None, *,
                 closed_grace_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cursors = cursors
        self._settings = settings or ClientSettings()
        self._closed_grace_s = closed_grace_s
        self._clock = clock
        #: dialog id -> conversation id, for the dialogs followed
        self.dialogs: dict[str, str] = {}
        #: conversation id -> when its stage was first seen closed (clock time)
        self.closed: dict[str, float] = {}
        #: conversation id -> metadata time (epoch ms) when it was let go of: a snapshot that
        #: names it again unchanged (within the margin) is not followed again. Entries older
        #: than the snapshot's lower bound are dropped, so this holds a margin's worth.
        self._released: dict[str, int] = {}
        self._closed_ms: dict[str, int] = {}  # closed conversation -> its newest metadata time
        #: the newest metadata time (epoch ms) this process saw, per consumer
        self.last_metadata_ms: dict[str, int] = {}
        self._subscribed: dict[str, set[str]] = {}  # session id -> dialog ids
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruned_at = clock()
        self._loaded_for: set[str] = set()  # consumers whose loaded closed marks were taken
        self.subscription_errors = 0
        self.released = 0  # dialogs let go of after their conversation closed

    def snapshot_since_ms(self, consumer_id: str) -> int:
        """The snapshot's minLastUpdatedTime: the newest metadata time known, less a margin."""
        known = [t for t in (self.last_metadata_ms.get(consumer_id),
                             self._cursors.last_metadata_ms(consumer_id)) if t is not None]
        return max(0, max(known) - SNAPSHOT_MARGIN_MS) if known else 0

    async def on_connected(self, connection: UmsConnection) -> None:
        self._subscribed[connection.session_key] = set()
        self.prune()
        consumer_id = connection.consumer_id
        await self._cursors.refresh(consumer_id)
        for dialog_id, conversation_id in self._cursors.known_dialogs(consumer_id).items():
            if dialog_id not in self.dialogs:
                self.dialogs[dialog_id] = conversation_id
        if consumer_id not in self._loaded_for:  # once: later UPSERTs know better
            self._loaded_for.add(consumer_id)
            now = self._clock()
            for conversation_id in self._cursors.closed_conversations(consumer_id):
                self.closed.setdefault(conversation_id, now)
        since_ms = self.snapshot_since_ms(consumer_id)
        self._released = {c: ms for c, ms in self._released.items() if ms >= since_ms}
        await request_with_retry(
            connection,
            frames.SUBSCRIBE_EX_CONVERSATIONS,
            {"minLastUpdatedTime": since_ms,
             "convState": ["OPEN", "CLOSE"], "stage": ["OPEN", "CLOSE"]},
            settings=self._settings,
        )
        for dialog_id, conversation_id in list(self.dialogs.items()):
            self._subscribe_later(connection, conversation_id, dialog_id)

    def prune(self) -> list[str]:
        """Let go of the dialogs of conversations closed longer than the grace window."""
        self._pruned_at = now = self._clock()
        gone = {c for c, at in self.closed.items() if now - at >= self._closed_grace_s}
        if not gone:
            return []
        dropped = [d for d, c in self.dialogs.items() if c in gone]
        for dialog_id in dropped:
            del self.dialogs[dialog_id]
        for subscribed in self._subscribed.values():  # a long session holds no history either
            subscribed.difference_update(dropped)
        for conversation_id in gone:
            del self.closed[conversation_id]
            updated_ms = self._closed_ms.pop(conversation_id, None)
            if updated_ms is not None:
                self._released[conversation_id] = updated_ms
        self._cursors.forget(dropped)
        self.released += len(dropped)
        return dropped

    async def on_disconnected(self, connection: UmsConnection, close: CloseInfo) -> None:
        self._subscribed.pop(connection.session_key, None)

    def follow(
        self, connection: UmsConnection, conversation_id: str, dialog_ids: Sequence[str], *,
        closed: bool = False, updated_ms: int | None = None,
    ) -> None:
        """An UPSERT of `conversation_id` named these dialogs (`payload.dialog_ids`): subscribe
        the new ones on this session. The MAIN dialog's id is the conversation id, followed
        even when the UPSERT does not list it. `closed`: the UPSERT says the conversation's
        stage is closed (the grace window starts at the first such UPSERT; a reopening ends
        it); `updated_ms`: its metadata time."""
        if updated_ms is not None and updated_ms > self.last_metadata_ms.get(
                connection.consumer_id, -1):
            self.last_metadata_ms[connection.consumer_id] = updated_ms
        if closed:
            released_ms = self._released.get(conversation_id)
            if released_ms is not None and (updated_ms is None or updated_ms <= released_ms):
                return  # let go of after its grace window, and nothing changed since
            self._released.pop(conversation_id, None)
            self.closed.setdefault(conversation_id, self._clock())
            if updated_ms is not None:
                self._closed_ms[conversation_id] = max(
                    updated_ms, self._closed_ms.get(conversation_id, updated_ms))
        else:
            self.closed.pop(conversation_id, None)
            self._closed_ms.pop(conversation_id, None)
            self._released.pop(conversation_id, None)
        if self._clock() - self._pruned_at >= PRUNE_INTERVAL_S:
            self.prune()
        if conversation_id not in dialog_ids:
            self._follow_one(connection, conversation_id, conversation_id)
        for dialog_id in dialog_ids:
            self._follow_one(connection, conversation_id, dialog_id)

    def _follow_one(self, connection: UmsConnection, conversation_id: str, dialog_id: str) -> None:
        self.dialogs.setdefault(dialog_id, conversation_id)
        self._subscribe_later(connection, conversation_id, dialog_id)

    def _subscribe_later(
        self, connection: UmsConnection, conversation_id: str, dialog_id: str
    ) -> None:
        subscribed = self._subscribed.get(connection.session_key)
        if subscribed is None or dialog_id in subscribed:
            return
        subscribed.add(dialog_id)
        task = asyncio.create_task(self._subscribe(connection, conversation_id, dialog_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(
        self, connection: UmsConnection, conversation_id: str, dialog_id: str
    ) -> None:
        cursor = self._cursors.cursor(dialog_id)
        from_seq = 0 if cursor is None else cursor + 1
        body = {"dialogId": dialog_id, "conversationId": conversation_id, "fromSeq": from_seq}
        try:
            await request_with_retry(
                connection, frames.SUBSCRIBE_MESSAGING_EVENTS, body, settings=self._settings
            )
        except ResponseError as exc:
            self.subscription_errors += 1
            if exc.code < 500:
                # Refused for good (e.g. not this consumer's dialog): retrying cannot help.
                log.error("dialog %s refused: %s", dialog_id, exc,
                          extra=event("ums.dialog.refused"))
                return
            log.warning("subscribing dialog %s failed: %s; reconnecting", dialog_id, exc,
                        extra=event("ums.dialog.subscribe_failed"))
            await connection.close(1011, "dialog subscription failed")
        except RequestTimeout as exc:
            self.subscription_errors += 1
            log.warning("subscribing dialog %s failed: %s; reconnecting", dialog_id, exc,
                        extra=event("ums.dialog.subscribe_failed"))
            # A dialog we cannot follow would lose events silently: start the session over.
            await connection.close(1011, "dialog subscription failed")
        except ConnectionClosed:
            pass  # the next session subscribes again from the stored cursor
