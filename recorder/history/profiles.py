"""Agents' public profiles: fetched when an agent first appears, appended to the log.

The recording sink tells `AgentProfiles.seen` each UPSERT it read (its details are parsed
already: nothing is decoded twice); one naming an agent (a participant with an agent role)
that is not cached queues one fetch of
`GET {acCdnDomain}/api/account/{account}/configuration/le-users/users/{agentPid}` (no auth,
protocol.md section 12). The answer becomes an `agent` event, so the projection (`agents`)
stays a pure function of the log:

- 200: `{"agentId", "found": true, "profile": <the body as received>, "fetchedAt": ms}`;
- 404: `{"agentId", "found": false, "status": 404, "fetchedAt": ms}`: "unknown", cached the
  same time as a profile, so an unknown agent costs one request per TTL, not a storm.

The dedupe key hashes the agent and what was answered, not the time: fetching an unchanged
profile again (another instance, the next TTL) adds no row. The cache is seeded from `agents`
at start, so a restart does not fetch again what is fresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson

from recorder.errors import RecorderError
from recorder.eventlog.records import (
    AGENT_PROFILE_TYPE,
    EventRecord,
    canonical_json,
    dedupe_digest,
)
from recorder.history import sql
from recorder.history.rest import RestClient, RestError
from recorder.history.sessions import RestSessions, rest_session_id
from recorder.logs import event
from recorder.ums import payload

log = logging.getLogger(__name__)

PROFILE_ENDPOINT = "profile"
#: Participant roles that are agents (a READER is an agent who was transferred away).
AGENT_ROLES = frozenset({"ASSIGNED_AGENT", "AGENT", "READER", "MANAGER"})
#: After a failed fetch (retries exhausted), the agent is tried again on its next sighting
#: once this long has passed.
FAILED_RETRY_S = 60.0
QUEUE_SIZE = 10_000
def agents_named(details: Any) -> list[str]:
    """Agent ids an UPSERT's `conversationDetails` names (any participants shape)."""
    return [p.id for p in payload.participants(details) if p.role in AGENT_ROLES]


def profile_record(agent_id: str, status: int, body: Any, *, account_id: str, consumer_id: str,
                   conversation_id: str | None, fetched_at: float) -> EventRecord:
    found = status == 200 and isinstance(body, dict)
    answer: dict[str, Any] = ({"found": True, "profile": body} if found
                              else {"found": False, "status": status})
    change = {"agentId": agent_id, **answer, "fetchedAt": int(fetched_at * 1000)}
    return EventRecord(
        received_at=fetched_at, account_id=account_id, consumer_id=consumer_id,
        session_id=rest_session_id(consumer_id), kind="agent", type=AGENT_PROFILE_TYPE,
        change_type="PROFILE" if found else "UNKNOWN", conversation_id=conversation_id,
        dialog_id=None, sequence=None, originator_id=agent_id, server_ts=None,
        dedupe_key=dedupe_digest("agent", agent_id, canonical_json(answer).decode()),
        payload=orjson.dumps(change).decode(),
    )


class AgentProfiles:
    def __init__(
        self, rest: RestClient, base_url: Callable[[], Awaitable[str]],
        put: Callable[[EventRecord], Awaitable[None]], pool: asyncpg.Pool, account: str,
        *, ttl_s: float, observe: Callable[[str], None] | None = None,
    ) -> None:
        self._rest = rest
        self._base_url = base_url
        self._put = put
        self._pool = pool
        self._account = account
        self._ttl_s = ttl_s
        self._observe = observe
        self._sessions = RestSessions(pool, account)
        #: agent id -> monotonic time until which it needs no fetch
        self._fresh_until: dict[str, float] = {}
        self._queued: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str, str | None]] = asyncio.Queue(QUEUE_SIZE)
        self.fetched = 0

    def seen(self, consumer_id: str, conversation_id: str, details: Any) -> None:
        """The recording sink read an UPSERT: queue a fetch for each agent it names that was
        not fetched within the TTL (the UPSERT's rows are queued for the writer already)."""
        now = time.monotonic()
        for agent_id in agents_named(details):
            if agent_id in self._queued or self._fresh_until.get(agent_id, 0.0) > now:
                continue
            try:
                self._queue.put_nowait((agent_id, consumer_id, conversation_id))
            except asyncio.QueueFull:
                return  # seen again on its next UPSERT
            self._queued.add(agent_id)

    async def load(self) -> None:
        """Seed the cache from what the projection already holds."""
        now_mono, now = time.monotonic(), time.time()
        async with self._pool.acquire() as connection:
            for row in await connection.fetch(sql.AGENTS_FETCHED):
                left = self._ttl_s - (now - row["fetched_at"])
                if left > 0:
                    self._fresh_until[row["agent_id"]] = now_mono + left

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.load()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("agent profiles: cache not seeded (%s); fetching as agents appear",
                        type(exc).__name__, extra=event("profiles.seed.failed"))
        while not stop.is_set():
            getter = asyncio.ensure_future(self._queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                break
            agent_id, consumer_id, conversation_id = getter.result()
            try:
                await self.fetch(agent_id, consumer_id, conversation_id)
            finally:
                self._queued.discard(agent_id)

    async def fetch(self, agent_id: str, consumer_id: str, conversation_id: str | None) -> None:
        try:
            base = await self._base_url()
            url = (f"{base}/api/account/{quote(self._account, safe='')}/configuration/"
                   f"le-users/users/{quote(agent_id, safe='')}")
            reply = await self._rest.request("GET", url, endpoint=PROFILE_ENDPOINT,
                                             headers={"Accept": "application/json"})
        except (RecorderError, OSError) as exc:  # RestError, or the domain lookup's error
            self._failed(agent_id, exc)
            return
        if reply.status not in (200, 404):
            self._failed(agent_id, RestError(PROFILE_ENDPOINT, f"answered {reply.status}"))
            return
        try:
            await self._sessions.ensure(consumer_id, base)
        except (OSError, asyncpg.PostgresError) as exc:
            self._failed(agent_id, exc)
            return
        await self._put(profile_record(
            agent_id, reply.status, reply.body, account_id=self._account,
            consumer_id=consumer_id, conversation_id=conversation_id, fetched_at=time.time()))
        self._fresh_until[agent_id] = time.monotonic() + self._ttl_s
        self.fetched += 1
        if self._observe is not None:
            self._observe("known" if reply.status == 200 else "unknown")

    def _failed(self, agent_id: str, exc: BaseException) -> None:
        self._fresh_until[agent_id] = time.monotonic() + FAILED_RETRY_S
        if self._observe is not None:
            self._observe("failed")
        log.warning("agent %s: profile not fetched (%s); tried again on a later sighting",
                    agent_id, exc, extra=event("profiles.fetch.failed"))
