"""Reconciliation: each conversation's log checked against LivePerson's history of it.

When (recorder.history.sql.DUE_CLOSED): a closed conversation once it has been quiet for
RECORDER_RECONCILE_AFTER_S (the history needs time too), again whenever it changed since its
last check, and again RECORDER_RECONCILE_RETRY_S after a check against a partial history. The
open conversations of an identity whose socket came back after a gap are checked after the
same delay. Only identities this instance holds are checked; `recorder reconcile` checks any.

Also every RECORDER_RECONCILE_RETRY_S, each held consumer's newest conversations in the
history's list (`…/consumer/metadata/search`) are looked through for any the socket never
reported (`discover`): those are checked too, so their events are backfilled. Listing is
spread over the sweeps so that it takes at most a quarter of the request budget.

What (recorder.history.compare): records the log lacks are appended as backfilled events
(type `msgHist.MessageEventRecord`, the live dedupe key, no cursor moved), then one
`reconciliation` event with the counts, which the projection shows in `reconciliations`.
Nothing in the log is ever deleted: what only the log has is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import orjson

from recorder.errors import RecorderError
from recorder.eventlog.records import (
    HISTORY_EVENT_TYPE,
    RECONCILIATION_TYPE,
    EventRecord,
    canonical_json,
    dedupe_digest,
)
from recorder.history import sql
from recorder.history.compare import (
    HISTORY_TYPES,
    Backfill,
    Comparison,
    DialogSpan,
    LogMessage,
    compare,
    listed,
    record_originator,
)
from recorder.history.messaging_history import MessagingHistory
from recorder.history.sessions import RestSessions, rest_session_id
from recorder.logs import event
from recorder.ums.client import SessionHandler
from recorder.ums.connection import CloseInfo, UmsConnection
from recorder.ums.tokens import SignupTokenSource, TokenSource

log = logging.getLogger(__name__)

SWEEP_BATCH = 50
CONCURRENCY = 4
#: Pages (of 100, newest first) of each consumer's conversation list looked through for
#: conversations the socket never reported.
DISCOVERY_PAGES = 1


@dataclasses.dataclass
class Outcome:
    conversation_id: str
    status: str  # reconciled | partial | skipped | failed
    history_records: int = 0
    matched: int = 0
    backfilled: int = 0
    only_in_log: int = 0
    content_differs: int = 0
    requests: int = 0
    reason: str | None = None
    unreported: bool = False  # found in the history's list, never reported on the socket


class IdentityTokens:
    """Which configured identity records which consumer, and that consumer's current token.

    `held(name)` says whether this instance holds the identity's lease (None: all of them, as
    for `recorder reconcile`). Sign-up identities are asked only when held: asking one that no
    socket has used would sign up a new consumer.
    """

    def __init__(self, sources: Sequence[tuple[str, TokenSource]],
                 held: Callable[[str], bool] | None = None) -> None:
        self._sources = list(sources)
        self._held = held

    async def consumers(self) -> dict[str, TokenSource]:
        found: dict[str, TokenSource] = {}
        for name, source in self._sources:
            if self._held is not None and not self._held(name):
                continue
            if self._held is None and isinstance(source, SignupTokenSource):
                continue
            try:
                token = await source.current()
            except RecorderError as exc:
                log.info("identity %s: no token for reconciliation (%s)", name, exc,
                         extra=event("reconcile.token.missing"))
                continue
            found[token.sub] = source
        return found


class Reconciler:
    def __init__(
        self, pool: asyncpg.Pool, put: Callable[[EventRecord], Awaitable[None]],
        history: MessagingHistory, tokens: IdentityTokens, account: str, *,
        after_s: float, retry_s: float, requests_per_minute: float = 120.0,
        observe: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._pool = pool
        self._put = put
        self._history = history
        self._tokens = tokens
        self._account = account
        self._after_s = after_s
        self._retry_s = retry_s
        self._observe = observe
        self._sessions = RestSessions(pool, account)
        #: conversation -> monotonic time before which the sweep leaves it alone (just
        #: checked and not projected yet, or failed)
        self._hold: dict[str, float] = {}
        #: consumer -> monotonic time its open conversations are due (a reconnect gap)
        self._gaps: dict[str, float] = {}
        self._seen_consumers: set[str] = set()
        self._listed_at: dict[str, float] = {}  # consumer -> when its list was last read
        self._every_s = min(30.0, max(1.0, after_s / 4))
        self._list_per_sweep = max(1, int(requests_per_minute / 4 * self._every_s / 60))
        self.outcomes: list[Outcome] = []

    # -- triggers ----------------------------------------------------------------------------

    def session_opened(self, consumer_id: str) -> None:
        """A socket of `consumer_id` opened: after the first, it follows a gap."""
        if consumer_id in self._seen_consumers:
            self._gaps[consumer_id] = time.monotonic() + self._after_s
        self._seen_consumers.add(consumer_id)

    async def run(self, stop: asyncio.Event) -> None:
        every = self._every_s
        while not stop.is_set():
            try:
                await self.sweep()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("reconciliation sweep failed (%s); trying again in %.0fs",
                            type(exc).__name__, every, extra=event("reconcile.sweep.failed"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def sweep(self) -> list[Outcome]:
        """One pass: the due closed conversations of held identities, and reconnect gaps."""
        consumers = await self._tokens.consumers()
        if not consumers:
            return []
        now = time.monotonic()
        due: list[str] = []
        for consumer_id, at in list(self._gaps.items()):
            if at <= now and consumer_id in consumers:
                del self._gaps[consumer_id]
                async with self._pool.acquire() as connection:
                    due += [r[0] for r in await connection.fetch(sql.OPEN_OF_CONSUMER,
                                                                 consumer_id)]
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(sql.DUE_CLOSED, list(consumers), self._after_s,
                                          self._retry_s, SWEEP_BATCH * 4)
        due += [r["conversation_id"] for r in rows]
        for conversation_id in [c for c, until in self._hold.items() if until <= now]:
            del self._hold[conversation_id]  # expired: kept, it would grow with every check
        due = [c for c in dict.fromkeys(due) if c not in self._hold][:SWEEP_BATCH]
        outcomes = await self.reconcile_many(due, consumers)
        # Conversations the socket never reported: each consumer's list every retry_s, a few
        # consumers per sweep so that listing takes a quarter of the request budget at most.
        listing = sorted((at, c) for c in consumers
                         if (at := self._listed_at.get(c, 0.0)) + self._retry_s <= now)
        chosen = {c: consumers[c] for _, c in listing[:self._list_per_sweep]}
        for consumer_id in chosen:
            self._listed_at[consumer_id] = now
        if chosen:
            outcomes += await self.discover(chosen)
        return outcomes

    async def reconcile_many(self, conversation_ids: Sequence[str],
                             consumers: dict[str, TokenSource] | None = None,
                             progress: Callable[[int, int], None] | None = None,
                             ) -> list[Outcome]:
        consumers = consumers if consumers is not None else await self._tokens.consumers()
        limit = asyncio.Semaphore(CONCURRENCY)
        done = 0
        outcomes: list[Outcome] = []

        async def one(conversation_id: str) -> None:
            nonlocal done
            async with limit:
                outcomes.append(await self.reconcile(conversation_id, consumers))
            done += 1
            if progress is not None:
                progress(done, len(conversation_ids))

        await asyncio.gather(*(one(c) for c in conversation_ids))
        return outcomes

    # -- one conversation --------------------------------------------------------------------

    async def discover(self, consumers: dict[str, TokenSource] | None = None,
                       pages: int = DISCOVERY_PAGES) -> list[Outcome]:
        """Conversations the history lists for each consumer and the socket never reported
        (no conversation event in the log): checked like any other, so their events are
        backfilled. The newest `pages` pages of 100 per consumer."""
        consumers = consumers if consumers is not None else await self._tokens.consumers()
        outcomes: list[Outcome] = []
        for consumer_id, source in consumers.items():
            listed: dict[str, dict[str, Any]] = {}
            try:
                token = (await source.current()).value
                offset = 0
                for _ in range(pages):
                    records, count, _ = await self._history.conversations(token, offset=offset)
                    listed.update((r["conversationId"], r) for r in records
                                  if isinstance(r.get("conversationId"), str))
                    offset += len(records)
                    if not records or count is None or offset >= count:
                        break
            except RecorderError as exc:
                log.warning("consumer %s: conversations not listed (%s)", consumer_id, exc,
                            extra=event("reconcile.discovery.failed"))
                continue
            async with self._pool.acquire() as connection:
                unknown = [r[0] for r in await connection.fetch(sql.UNREPORTED, list(listed))]
            for conversation_id in unknown:
                log.warning("conversation %s of consumer %s: listed by the history, never "
                            "reported on the socket", conversation_id, consumer_id,
                            extra=event("reconcile.conversation.unreported"))
                outcomes.append(await self.reconcile(
                    conversation_id, {consumer_id: source},
                    listing=(consumer_id, listed[conversation_id])))
        return outcomes

    async def reconcile(self, conversation_id: str,
                        consumers: dict[str, TokenSource] | None = None,
                        listing: tuple[str, dict[str, Any]] | None = None) -> Outcome:
        """Check one conversation. `listing`: (consumer, the history's metadata record) of a
        conversation the log knows nothing of but its listing in the history."""
        consumers = consumers if consumers is not None else await self._tokens.consumers()
        async with self._pool.acquire() as connection:
            conversation = await connection.fetchrow(sql.CONVERSATION, conversation_id)
            consumer_id = (conversation["consumer_id"] if conversation is not None else
                           await connection.fetchval(sql.CONVERSATION_CONSUMER, conversation_id))
            spans = [DialogSpan(*row) for row in
                     await connection.fetch(sql.DIALOGS, conversation_id)]
        metadata: dict[str, Any] | None = None
        if listing is not None:
            consumer_id, metadata = consumer_id or listing[0], listing[1]
            spans = spans or listed_dialogs(metadata)
        source = consumers.get(consumer_id) if consumer_id else None
        if source is None:
            why = ("unknown conversation" if consumer_id is None
                   else "no configured identity holds this consumer's token")
            return self._done(Outcome(conversation_id, "skipped", reason=why), hold=True)
        try:
            token = (await source.current()).value
            content = await self._history.content(token, conversation_id,
                                                  [s.dialog_id for s in spans])
        except RecorderError as exc:
            log.warning("conversation %s: history not read (%s); tried again in %.0fs",
                        conversation_id, exc, self._retry_s,
                        extra=event("reconcile.history.failed"))
            return self._done(Outcome(conversation_id, "failed", reason=str(exc)), hold=True)
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(sql.LOG_MESSAGES, conversation_id)
        logged = [LogMessage(r["dialog_id"], r["sequence"], r["change_type"],
                             r["originator_id"], r["server_ms"],
                             orjson.loads(r["event"]) if r["event"] else None) for r in rows]
        found = compare(conversation_id, logged, spans, content.records)
        lagging = found.history_records == 0 and any(
            m.event_type in HISTORY_TYPES for m in logged)
        partial = content.partial or lagging
        state = None
        shown = conversation if conversation is not None and conversation["state"] else metadata
        if shown is not None:
            closed = shown.get("stage") == "CLOSE" or (
                shown.get("stage") is None and shown.get("state") == "CLOSE")
            state = "CLOSE" if closed else shown.get("state")
        await self._sessions.ensure(consumer_id, await self._history.base_url())
        now = time.time()
        for backfill in found.backfill:
            await self._put(self._backfill_record(backfill, conversation_id, consumer_id, now))
        await self._put(self._reconciliation_record(
            found, conversation_id, consumer_id, state, partial, content.requests, now,
            metadata))
        outcome = Outcome(
            conversation_id, "partial" if partial else "reconciled", found.history_records,
            found.matched, len(found.backfill), len(found.only_in_log),
            len(found.content_differs), content.requests, unreported=metadata is not None)
        if found.backfill or found.only_in_log:
            log.info("conversation %s: %d backfilled from the history, %d only in the log",
                     conversation_id, len(found.backfill), len(found.only_in_log),
                     extra=event("reconcile.conversation.differs"))
        return self._done(outcome, hold=False)

    def _done(self, outcome: Outcome, *, hold: bool) -> Outcome:
        # Checked: left alone until its reconciliation is projected. Failed: until retry_s.
        wait = self._retry_s if hold else max(30.0, self._after_s)
        self._hold[outcome.conversation_id] = time.monotonic() + wait
        self.outcomes.append(outcome)
        del self.outcomes[:-1000]
        if self._observe is not None:
            self._observe(outcome)
        return outcome

    def _backfill_record(self, backfill: Backfill, conversation_id: str, consumer_id: str,
                         now: float) -> EventRecord:
        record = backfill.record
        body = record.get("event")
        event_type = body.get("type") if isinstance(body, dict) else None
        server_ms = record.get("serverTimestamp")
        if backfill.sequence is not None:
            key = dedupe_digest("messaging", backfill.dialog_id, backfill.sequence)
        else:
            key = dedupe_digest("history-content", conversation_id,
                                canonical_json(record).decode())
        return EventRecord(
            received_at=now, account_id=self._account, consumer_id=consumer_id,
            session_id=rest_session_id(consumer_id), kind="messaging", type=HISTORY_EVENT_TYPE,
            change_type=event_type if isinstance(event_type, str) else None,
            conversation_id=conversation_id, dialog_id=backfill.dialog_id,
            sequence=backfill.sequence, originator_id=record_originator(record),
            server_ts=server_ms / 1000 if type(server_ms) is int and server_ms > 0 else None,
            dedupe_key=key, payload=orjson.dumps(record).decode(),
        )

    def _reconciliation_record(self, found: Comparison, conversation_id: str,
                               consumer_id: str, state: str | None, partial: bool,
                               requests: int, now: float,
                               metadata: dict[str, Any] | None = None) -> EventRecord:
        checked_ms = int(now * 1000)
        change: dict[str, Any] = {
            "conversationId": conversation_id, "consumerId": consumer_id,
            "checkedAt": checked_ms, "conversationState": state,
            "historyRecords": found.history_records, "matched": found.matched,
            "backfilled": len(found.backfill), "onlyInLog": len(found.only_in_log),
            "contentDiffers": len(found.content_differs), "historyPartial": partial,
            "requests": requests,
            "onlyInLogKeys": listed(found.only_in_log),
            "contentDiffersKeys": listed(found.content_differs),
            "backfilledKeys": listed([(b.dialog_id, b.sequence) for b in found.backfill]),
        }
        if metadata is not None:  # never reported on the socket: what the history lists
            change["unreported"] = True
            change["historyMetadata"] = metadata
        return EventRecord(
            received_at=now, account_id=self._account, consumer_id=consumer_id,
            session_id=rest_session_id(consumer_id), kind="reconciliation",
            type=RECONCILIATION_TYPE, change_type="CHECKED", conversation_id=conversation_id,
            dialog_id=None, sequence=None, originator_id=None, server_ts=None,
            dedupe_key=dedupe_digest("reconciliation", conversation_id, uuid.uuid4().hex),
            payload=orjson.dumps(change).decode(),
        )


def listed_dialogs(metadata: dict[str, Any]) -> list[DialogSpan]:
    """The dialogs a history metadata record names (no times: MAIN is the fallback)."""
    found = metadata.get("dialogs")
    return [DialogSpan(d["dialogId"], d.get("dialogType"), None, None)
            for d in (found if isinstance(found, list) else [])
            if isinstance(d, dict) and isinstance(d.get("dialogId"), str)]


class ReconnectWatch:
    """A client's session handler that also tells the reconciler of each session opened, so
    that a reconnect (a gap the replay may not cover) gets the open conversations checked."""

    def __init__(self, inner: SessionHandler, reconciler: Reconciler) -> None:
        self._inner = inner
        self._reconciler = reconciler

    async def on_connected(self, connection: UmsConnection) -> None:
        await self._inner.on_connected(connection)
        self._reconciler.session_opened(connection.consumer_id)

    async def on_disconnected(self, connection: UmsConnection, close: CloseInfo) -> None:
        await self._inner.on_disconnected(connection, close)
