"""What a recording session subscribes to, and from where it resumes.

On every connect: `cqm.SubscribeExConversations` for all conversations (OPEN and CLOSE, both
stages), then `ms.SubscribeMessagingEvents` for every known dialog with `fromSeq = cursor + 1`
(`fromSeq` is inclusive; protocol.md section 6.3), and 0 for dialogs never seen. Dialogs are
learned from the `dialogs[]` of each UPSERT, so POST_SURVEY dialogs are subscribed as they
open: whoever reads the UPSERTs (the recording sink, recorder.eventlog.recording) calls
`Subscriber.follow` with what it found. The subscriber never sees a frame itself. Subscriptions
are sent from side tasks: the reader must keep reading to see their replies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
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


class Cursors(Protocol):
    """Where a dialog resumes: the last *stored* sequence (recorder.eventlog.recording's
    CursorStore)."""

    def cursor(self, dialog_id: str) -> int | None:
        """The last stored sequence of a dialog; None: nothing stored yet."""

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        """Dialogs (id -> conversation id) to follow even if no snapshot names them."""


class Subscriber:
    """The SessionHandler that keeps every dialog of every conversation subscribed."""

    def __init__(self, cursors: Cursors, settings: ClientSettings | None = None) -> None:
        self._cursors = cursors
        self._settings = settings or ClientSettings()
        #: dialog id -> conversation id, for every dialog ever seen
        self.dialogs: dict[str, str] = {}
        self._subscribed: dict[str, set[str]] = {}  # session id -> dialog ids
        self._tasks: set[asyncio.Task[None]] = set()
        self.subscription_errors = 0

    async def on_connected(self, connection: UmsConnection) -> None:
        self._subscribed[connection.session_key] = set()
        for dialog_id, conversation_id in self._cursors.known_dialogs(
            connection.consumer_id
        ).items():
            self.dialogs.setdefault(dialog_id, conversation_id)
        await request_with_retry(
            connection,
            frames.SUBSCRIBE_EX_CONVERSATIONS,
            {"minLastUpdatedTime": 0, "convState": ["OPEN", "CLOSE"], "stage": ["OPEN", "CLOSE"]},
            settings=self._settings,
        )
        for dialog_id, conversation_id in list(self.dialogs.items()):
            self._subscribe_later(connection, conversation_id, dialog_id)

    async def on_disconnected(self, connection: UmsConnection, close: CloseInfo) -> None:
        self._subscribed.pop(connection.session_key, None)

    def follow(
        self, connection: UmsConnection, conversation_id: str, dialog_ids: Sequence[str]
    ) -> None:
        """An UPSERT of `conversation_id` named these dialogs (`payload.dialog_ids`): subscribe
        the new ones on this session. The MAIN dialog's id is the conversation id, followed
        even when the UPSERT does not list it."""
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
