"""recorder.history.profiles: which participants are agents, the `agent` event a fetch becomes
(its dedupe key ignores the time), and AgentProfiles fetching from the simulator's CDN."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from recorder.eventlog.records import AGENT_PROFILE_TYPE, EventRecord
from recorder.history.profiles import AGENT_ROLES, AgentProfiles, agents_named, profile_record
from recorder.history.rest import RestClient
from recorder.history.sessions import rest_session_id
from recorder.simulator import Simulator
from tests.helpers import wait_until
from tests.projection_helpers import ACCOUNT, CONSUMER, CONV, upsert

CONTROLLER = "controller-1"
PROFILE = {"id": "agent-1", "nickname": "Léa", "fullName": "Léa Dubois",
           "pictureUrl": "https://cdn.example.invalid/agent-1.png", "employeeId": "E123456"}
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjb25zdW1lciJ9.c2lnbmF0dXJl"


def with_participants(participants: Any, **more: Any) -> dict[str, Any]:
    """An UPSERT's `conversationDetails` with these participants."""
    details = upsert(CONV, 1_700_000_000_000)["result"]["conversationDetails"]
    details["participants"] = participants
    details.update(more)
    return dict(details)


def test_agent_roles_are_the_documented_ones() -> None:
    assert frozenset({"ASSIGNED_AGENT", "AGENT", "READER", "MANAGER"}) == AGENT_ROLES


def test_agents_named_by_role_in_the_array_shape() -> None:
    stored = with_participants([
        {"id": CONSUMER, "role": "CONSUMER"}, {"id": "a-assigned", "role": "ASSIGNED_AGENT"},
        {"id": "a-agent", "role": "AGENT"}, {"id": "a-reader", "role": "READER"},
        {"id": "a-manager", "role": "MANAGER"}, {"id": CONTROLLER, "role": "CONTROLLER"},
        {"id": "no-role"},
    ])
    assert agents_named(stored) == ["a-assigned", "a-agent", "a-reader", "a-manager"]


def test_agents_named_in_the_role_map_shapes() -> None:
    as_map = with_participants({"CONSUMER": [CONSUMER], "ASSIGNED_AGENT": ["a-1"],
                                "READER": ["a-2", "a-3"], "CONTROLLER": [CONTROLLER],
                                "MANAGER": "a-4"})
    assert sorted(agents_named(as_map)) == ["a-1", "a-2", "a-3", "a-4"]
    # Agent v2 raw: `participants` as a map beside `participantsPId`, whose UUIDs win.
    pids = with_participants({"CONSUMER": ["c-login"], "ASSIGNED_AGENT": ["agent-login"]},
                             participantsPId={"CONSUMER": [CONSUMER],
                                              "ASSIGNED_AGENT": ["agent-uuid"]})
    assert agents_named(pids) == ["agent-uuid"]


def test_agents_named_from_odd_details_is_nobody() -> None:
    assert agents_named(with_participants([{"id": "a-1", "role": "ASSIGNED_AGENT"}])) == ["a-1"]
    for other in (None, "not details", [1, 2], {}, with_participants([]),
                  with_participants([{"id": CONSUMER, "role": "CONSUMER"}])):
        assert agents_named(other) == []


def _fields(item: EventRecord) -> dict[str, Any]:
    return {name: getattr(item, name) for name in EventRecord.__slots__}


def profile(status: int, body: Any, fetched_at: float, agent: str = "agent-1") -> EventRecord:
    return profile_record(agent, status, body, account_id=ACCOUNT, consumer_id=CONSUMER,
                          conversation_id=CONV, fetched_at=fetched_at)


def test_a_profile_becomes_an_agent_event() -> None:
    found = profile(200, PROFILE, 1_700_000_000.25)
    assert (found.kind, found.type, found.change_type) == ("agent", AGENT_PROFILE_TYPE, "PROFILE")
    assert (found.account_id, found.consumer_id, found.conversation_id) == (ACCOUNT, CONSUMER,
                                                                            CONV)
    assert (found.dialog_id, found.sequence, found.server_ts) == (None, None, None)
    assert found.originator_id == "agent-1" and found.received_at == 1_700_000_000.25
    assert found.session_id == rest_session_id(CONSUMER)
    assert orjson.loads(found.payload) == {"agentId": "agent-1", "found": True,
                                           "profile": PROFILE, "fetchedAt": 1_700_000_000_250}


@pytest.mark.parametrize(("status", "body"), [(404, {"code": 404, "message": "not found"}),
                                              (200, ["not", "a", "profile"]), (200, None)])
def test_an_answer_without_a_profile_is_unknown(status: int, body: Any) -> None:
    found = profile(status, body, 1_700_000_000.0)
    assert found.change_type == "UNKNOWN"
    assert orjson.loads(found.payload) == {"agentId": "agent-1", "found": False,
                                           "status": status, "fetchedAt": 1_700_000_000_000}


def test_the_dedupe_key_is_what_was_answered_not_when() -> None:
    first = profile(200, PROFILE, 1_700_000_000.0)
    later = profile(200, dict(PROFILE), 1_800_000_000.0)
    assert first.dedupe_key == later.dedupe_key
    assert first.payload != later.payload  # the time is kept, only the key ignores it
    renamed = profile(200, {**PROFILE, "nickname": "Lea"}, 1_700_000_000.0)
    assert renamed.dedupe_key != first.dedupe_key
    reordered = profile(200, dict(reversed(list(PROFILE.items()))), 1_700_000_000.0)
    assert reordered.dedupe_key == first.dedupe_key
    assert profile(200, PROFILE, 1.0, agent="agent-2").dedupe_key != first.dedupe_key
    unknown, unknown_later = profile(404, None, 1.0), profile(404, {"code": 404}, 2.0)
    assert unknown.dedupe_key == unknown_later.dedupe_key != first.dedupe_key


# -- AgentProfiles against the simulator ---------------------------------------------------------


class FakeConnection:
    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[Any, ...]]] = []
        self.rows: list[dict[str, Any]] = []

    async def execute(self, query: str, *args: Any) -> str:
        self.executed.append((query, args))
        return "INSERT 0 1"

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return self.rows


class FakePool:
    """The little of asyncpg.Pool that AgentProfiles uses (its sessions row, the cache seed)."""

    def __init__(self) -> None:
        self.connection = FakeConnection()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConnection]:
        yield self.connection


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(account=ACCOUNT, seed=5, auto_reply=False) as s:
        yield s


async def test_agent_profiles_fetch_once_per_agent_without_any_token(sim: Simulator) -> None:
    known, unknown = sim.world.agents[0], sim.world.agents[1]
    sim.faults.unknown_agents = {unknown}
    stored: list[EventRecord] = []
    observed: list[str] = []
    pool = FakePool()

    async def put(item: EventRecord) -> None:
        stored.append(item)

    async def base_url() -> str:
        return sim.http_url

    async with aiohttp.ClientSession() as http:
        rest = RestClient(http, requests_per_minute=60_000.0, server_error_delays_s=(0.01,))
        profiles = AgentProfiles(rest, base_url, put, pool, ACCOUNT,  # type: ignore[arg-type]
                                 ttl_s=600.0, observe=observed.append)
        upserts = [with_participants([{"id": CONSUMER, "role": "CONSUMER"},
                                      {"id": known, "role": "ASSIGNED_AGENT"},
                                      {"id": unknown, "role": "READER"},
                                      {"id": CONTROLLER, "role": "CONTROLLER"}])
                   for _ in range(3)]
        stop = asyncio.Event()
        running = asyncio.ensure_future(profiles.run(stop))
        for details in upserts:
            profiles.seen(CONSUMER, CONV, details)
        await wait_until(lambda: profiles.fetched == 2, within_s=10)
        profiles.seen(CONSUMER, CONV, upserts[0])  # fresh within the TTL
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(running, 5)
    assert [(r.originator_id, r.change_type) for r in stored] == [(known, "PROFILE"),
                                                                   (unknown, "UNKNOWN")]
    assert orjson.loads(stored[0].payload)["profile"] == sim.agent_profile(known)
    assert observed == ["known", "unknown"] and profiles.fetched == 2
    # Once per agent, however often the UPSERTs named it; a 404 is cached the same.
    assert [(r.endpoint, r.key, r.status) for r in sim.rest_requests] == [
        ("profile", known, 200), ("profile", unknown, 404)]
    # The REST session row is written once, before the first event, and names no token.
    assert len(pool.connection.executed) == 1
    _, args = pool.connection.executed[0]
    assert args[0] == rest_session_id(CONSUMER) and args[4] == sim.http_url
    for item in stored:
        assert sim.token_for(CONSUMER) not in item.payload and TOKEN not in item.payload
        assert set(orjson.loads(item.payload)) <= {"agentId", "found", "profile", "status",
                                                   "fetchedAt"}


async def test_a_profile_that_cannot_be_fetched_is_not_stored(sim: Simulator) -> None:
    sim.faults.rest_server_error_every = 1
    stored: list[EventRecord] = []
    observed: list[str] = []

    async def put(item: EventRecord) -> None:
        stored.append(item)

    async def base_url() -> str:
        return sim.http_url

    async with aiohttp.ClientSession() as http:
        rest = RestClient(http, requests_per_minute=60_000.0, server_error_delays_s=(0.01,))
        profiles = AgentProfiles(rest, base_url, put, FakePool(), ACCOUNT,  # type: ignore[arg-type]
                                 ttl_s=600.0, observe=observed.append)
        await profiles.fetch(sim.world.agents[0], CONSUMER, CONV)
    assert stored == [] and observed == ["failed"] and profiles.fetched == 0
    assert [r.status for r in sim.rest_requests] == [503, 503]
