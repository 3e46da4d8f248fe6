"""What a recording session subscribes to, and from where it resumes.

On every connect: `cqm.SubscribeExConversations` for all conversations (OPEN and CLOSE, both
stages), then `ms.SubscribeMessagingEvents` for every known dialog with `fromSeq = cursor + 1`
(`fromSeq` is inclusive; protocol.md section 6.3), and 0 for dialogs never seen. Dialogs are
discovered from the `dialogs[]` of each UPSERT, so POST_SURVEY dialogs are subscribed as they
open. Subscriptions are sent from side tasks: the reader must keep reading to see their replies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

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
from recorder.ums.frames import MalformedFrame, Notification

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where frames go; `cursor` is the last *stored* sequence of a dialog (None: never)."""

    async def notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None: ...

    async def malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None: ...

    async def other(self, connection: UmsConnection, frame: Any, received_at: float) -> None: ...

    def cursor(self, dialog_id: str) -> int | None: ...

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        """Dialogs (id -> conversation id) to follow even if no snapshot names them."""


class Subscriber:
    """A SessionHandler that keeps every dialog of every conversation subscribed."""

    def __init__(self, sink: EventSink, settings: ClientSettings | None = None) -> None:
        self._sink = sink
        self._settings = settings or ClientSettings()
        #: dialog id -> conversation id, for every dialog ever seen
        self.dialogs: dict[str, str] = {}
        self._subscribed: dict[str, set[str]] = {}  # session id -> dialog ids
        self._tasks: set[asyncio.Task[None]] = set()
        self.subscription_errors = 0

    async def on_connected(self, connection: UmsConnection) -> None:
        self._subscribed[str(connection.session_id)] = set()
        for dialog_id, conversation_id in self._sink.known_dialogs(connection.consumer_id).items():
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
        self._subscribed.pop(str(connection.session_id), None)

    async def on_notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None:
        # Store first: the raw frame must be kept even if interpreting it fails.
        await self._sink.notification(connection, notification, received_at)
        if frames.is_conversation_notification(notification):
            for change in notification.changes:
                self._discover(connection, change)

    async def on_malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None:
        await self._sink.malformed(connection, error, received_at)

    async def on_other(self, connection: UmsConnection, frame: Any, received_at: float) -> None:
        await self._sink.other(connection, frame, received_at)

    def _discover(self, connection: UmsConnection, change: dict[str, Any]) -> None:
        if change.get("type") != "UPSERT":
            return
        conversation_id = frames.change_conversation_id(change)
        if not conversation_id:
            return
        details = (change.get("result") or {}).get("conversationDetails") or {}
        dialog_ids = [d.dialog_id for d in frames.dialogs(details) if d.dialog_id]
        if conversation_id not in dialog_ids:
            dialog_ids.insert(0, conversation_id)  # the MAIN dialog id is the conversation id
        for dialog_id in dialog_ids:
            self.dialogs.setdefault(dialog_id, conversation_id)
            self._subscribe_later(connection, conversation_id, dialog_id)

    def _subscribe_later(
        self, connection: UmsConnection, conversation_id: str, dialog_id: str
    ) -> None:
        subscribed = self._subscribed.get(str(connection.session_id))
        if subscribed is None or dialog_id in subscribed:
            return
        subscribed.add(dialog_id)
        task = asyncio.create_task(self._subscribe(connection, conversation_id, dialog_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(
        self, connection: UmsConnection, conversation_id: str, dialog_id: str
    ) -> None:
        cursor = self._sink.cursor(dialog_id)
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
