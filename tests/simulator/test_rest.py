"""The simulator's REST side: CSDS names, agent profiles, the Messaging History, its faults,
and withholding (events the socket never delivers, so only the history shows them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from recorder.simulator import Simulator, SimulatorError
from recorder.simulator.rest import RECORD_FIELDS, agent_profile
from tests.simclient import PlainClient

ACCOUNT = "71234567"
HISTORY = f"/messaging_history/api/account/{ACCOUNT}/conversations"
CONTENT = f"{HISTORY}/conversation/content/search"
METADATA = f"{HISTORY}/consumer/metadata/search"
HISTORY_TYPES = ("ContentEvent", "RichContentEvent", "AcceptStatusEvent")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(account=ACCOUNT, seed=3, auto_reply=False) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(token: str, scheme: str = "jwt") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str] | None = None,
    json: Any = None,
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=json) as reply:
        return reply.status, await reply.json()


def history_truth(sim: Simulator, conv: str, dialogs: list[str] | None = None) -> list[Any]:
    """What the history must hold: the stored events of the three types, as records."""
    conversation = sim.conversation(conv)
    ids = dialogs or [d["dialogId"] for d in conversation["dialogs"]]
    return [
        {key: change[key] for key in RECORD_FIELDS}
        for dialog in ids for change in sim.stored_events(dialog)
        if change["event"]["type"] in HISTORY_TYPES
    ]


def full_conversation(sim: Simulator, consumer: str) -> tuple[str, str]:
    """A conversation with every kind of event, an unknown one, typing and a survey dialog."""
    conv = sim.create_conversation(consumer)
    first = sim.consumer_message(conv, "hello")
    sim.consumer_typing(conv)
    sim.agent_message(conv, "hi, how can I help?")
    sim.agent_read(conv, [first])
    sim.faults.unknown_event_probability = 1.0
    sim.agent_rich_content(conv)  # followed by a stored FutureEvent
    sim.faults.unknown_event_probability = 0.0
    for i in range(4):
        sim.consumer_message(conv, f"question {i}")
        sim.agent_message(conv, f"answer {i}")
    sim.consumer_file(conv)
    survey = sim.close_conversation(conv)
    assert survey is not None
    question = sim.survey_question(survey)
    sim.consumer_receipt(survey, [question])
    sim.survey_answer(survey)  # an ACTION receipt and a text, both with metadata
    return conv, survey


# -- CSDS and profiles ---------------------------------------------------------------------------


async def test_csds_names_the_history_and_profile_services(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for service in ("msgHist", "acCdnDomain"):
        url = f"{sim.http_url}/api/account/{ACCOUNT}/service/{service}/baseURI.json?version=1.0"
        status, body = await fetch(http, "GET", url)
        assert status == 200
        assert body == {"service": service, "account": ACCOUNT, "baseURI": f"127.0.0.1:{sim.port}"}


async def test_agent_profile_is_public_and_deterministic(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    agent = sim.world.agents[0]
    url = f"{sim.http_url}/api/account/{ACCOUNT}/configuration/le-users/users/{agent}"
    status, body = await fetch(http, "GET", url)  # no Authorization header at all
    assert status == 200
    assert set(body) == {"id", "nickname", "fullName", "pictureUrl", "employeeId"}
    assert body["id"] == agent and body == sim.agent_profile(agent)
    assert body["fullName"].startswith(body["nickname"])
    async with Simulator(account=ACCOUNT, seed=3) as again:
        assert again.world.agents[0] == agent
        assert again.agent_profile(agent) == body
    assert agent_profile(4, agent) != body  # another seed, another person
    many = [agent_profile(3, f"agent-{i}")["nickname"] for i in range(60)]
    assert any(not name.isascii() for name in many) and any(name.isascii() for name in many)
    assert [r[:3] for r in sim.rest_requests] == [("profile", agent, 200)]


async def test_agent_profile_404_for_unknown_agents(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    base = f"{sim.http_url}/api/account/{ACCOUNT}/configuration/le-users/users"
    status, body = await fetch(http, "GET", f"{base}/not-an-agent")
    assert status == 404 and "not-an-agent" in body["message"]
    hidden = sim.world.agents[1]
    assert (await fetch(http, "GET", f"{base}/{hidden}"))[0] == 200
    sim.faults.unknown_agents = {hidden}
    status, body = await fetch(http, "GET", f"{base}/{hidden}")
    assert status == 404 and body["code"] == 404
    assert sim.agent_profile(hidden) is None and sim.agent_profile("not-an-agent") is None
    assert sim.agent_profile(sim.world.agents[2]) is not None
    other = f"{sim.http_url}/api/account/999/configuration/le-users/users/{sim.world.agents[2]}"
    assert (await fetch(http, "GET", other))[0] == 404
    assert [r.status for r in sim.rest_requests] == [404, 200, 404, 404]


# -- history: content ----------------------------------------------------------------------------


async def test_history_content_pages_through_the_stored_truth(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    conv, survey = full_conversation(sim, consumer)
    truth = history_truth(sim, conv)
    assert {r["dialogId"] for r in truth} == {conv, survey}
    assert len(truth) < sum(len(sim.stored_events(d)) for d in (conv, survey))  # FutureEvent
    url: str | None = f"{sim.http_url}{CONTENT}?conversationId={conv}&offset=0&limit=4"
    records: list[Any] = []
    pages = 0
    while url is not None:
        status, body = await fetch(http, "GET", url, headers=auth(sim.token_for(consumer)))
        assert status == 200
        assert body["_metadata"]["count"] == len(truth)
        assert body["_metadata"]["self"] == {"rel": "self", "href": url}
        assert len(body["messageEventRecords"]) <= 4
        records += body["messageEventRecords"]
        pages += 1
        url = body["_metadata"].get("next", {}).get("href")
    assert pages == -(-len(truth) // 4)
    assert records == truth
    assert all(list(r) == list(RECORD_FIELDS) for r in records)  # no metadata, no extras
    # The default page holds everything here; Bearer works as well as jwt.
    status, body = await fetch(http, "GET", f"{sim.http_url}{CONTENT}?conversationId={conv}",
                               headers=auth(sim.token_for(consumer), "Bearer"))
    assert status == 200 and body["messageEventRecords"] == truth
    assert "next" not in body["_metadata"]
    desc = f"{sim.http_url}{CONTENT}?conversationId={conv}&sort=start:desc"
    _, body = await fetch(http, "GET", desc, headers=auth(sim.token_for(consumer)))
    assert body["messageEventRecords"] == truth[::-1]


async def test_history_content_post_form_and_limits(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    conv, survey = full_conversation(sim, consumer)
    headers = auth(sim.token_for(consumer))
    status, body = await fetch(http, "POST", f"{sim.http_url}{CONTENT}?offset=0&limit=2",
                               headers=headers, json={"dialogId": survey})
    survey_truth = history_truth(sim, conv, [survey])
    assert status == 200 and body["_metadata"]["count"] == len(survey_truth)
    assert body["messageEventRecords"] == survey_truth[:2]
    assert "offset=2" in body["_metadata"]["next"]["href"]
    status, body = await fetch(http, "POST", f"{sim.http_url}{CONTENT}?offset=2&limit=50",
                               headers=headers, json={"dialogId": survey})
    assert body["messageEventRecords"] == survey_truth[2:]
    _, body = await fetch(http, "POST", f"{sim.http_url}{CONTENT}", headers=headers,
                          json={"dialogId": conv})
    assert body["messageEventRecords"] == history_truth(sim, conv, [conv])
    past = f"{sim.http_url}{CONTENT}?conversationId={conv}&offset=500"
    status, body = await fetch(http, "GET", past, headers=headers)
    assert status == 200 and body["messageEventRecords"] == []
    assert body["_metadata"]["count"] == len(history_truth(sim, conv))
    for bad in ("limit=101", "limit=0", "offset=-1", "sort=sideways"):
        url = f"{sim.http_url}{CONTENT}?conversationId={conv}&{bad}"
        assert (await fetch(http, "GET", url, headers=headers))[0] == 400
    assert (await fetch(http, "GET", f"{sim.http_url}{CONTENT}", headers=headers))[0] == 400
    assert (await fetch(http, "POST", f"{sim.http_url}{CONTENT}", headers=headers,
                        json={}))[0] == 400
    status, _ = await fetch(http, "POST", f"{sim.http_url}{CONTENT}", headers=headers,
                            json={"dialogId": "no-such-dialog"})
    assert status == 404
    assert sim.rest_requests[0][:3] == ("history_content", survey, 200)
    assert sim.rest_requests[-1][:3] == ("history_content", "no-such-dialog", 404)


async def test_history_needs_the_consumers_token(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    owner, stranger = sim.new_consumer(), sim.new_consumer()
    conv = sim.create_conversation(owner)
    sim.consumer_message(conv, "mine")
    url = f"{sim.http_url}{CONTENT}?conversationId={conv}"
    async with Simulator(account=ACCOUNT, seed=3) as other:
        foreign = other.issue_token(owner)
    expired = sim.issue_token(owner, ttl_s=-30)
    sim.issue_token(owner)  # the one `token_for` hands out from here on
    for headers in (None, auth("garbage"), auth(expired), auth(foreign),
                    {"Authorization": f"Basic {sim.token_for(owner)}"}):
        status, body = await fetch(http, "GET", url, headers=headers)
        assert status == 401 and isinstance(body["message"], str)
    status, _ = await fetch(http, "GET", url, headers=auth(sim.token_for(stranger)))
    assert status == 404
    status, _ = await fetch(http, "POST", f"{sim.http_url}{CONTENT}", json={"dialogId": conv},
                            headers=auth(sim.token_for(stranger)))
    assert status == 404
    unknown = f"{sim.http_url}{CONTENT}?conversationId=nope"
    assert (await fetch(http, "GET", unknown, headers=auth(sim.token_for(owner))))[0] == 404
    assert (await fetch(http, "GET", url, headers=auth(sim.token_for(owner))))[0] == 200
    assert (await fetch(http, "POST", f"{sim.http_url}{METADATA}"))[0] == 401
    assert [r.status for r in sim.rest_requests] == [401] * 5 + [404, 404, 404, 200, 401]
    assert sim.rest_requests[-1][:3] == ("history_metadata", None, 401)


# -- history: metadata ---------------------------------------------------------------------------


async def test_metadata_search_lists_the_consumers_conversations(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    closed = sim.create_conversation(consumer)
    sim.close_conversation(closed, survey=False)
    surveyed = sim.create_conversation(consumer)
    survey = sim.close_conversation(surveyed, survey=True)
    sim.complete_survey(surveyed)
    current = sim.create_conversation(consumer)
    sim.create_conversation(sim.new_consumer())  # someone else's: never listed
    headers = auth(sim.token_for(consumer))
    status, body = await fetch(http, "POST", f"{sim.http_url}{METADATA}", headers=headers)
    assert status == 200 and body["_metadata"]["count"] == 3
    records = body["conversationHistoryMetadataRecords"]
    assert [r["conversationId"] for r in records] == [current, surveyed, closed]  # start:desc
    by_id = {r["conversationId"]: r for r in records}
    for conv_id, record in by_id.items():
        details = sim.conversation(conv_id)
        assert record["state"] == details["state"] and record["stage"] == details["stage"]
        assert record["startTs"] == details["startTs"] and record["brandId"] == ACCOUNT
        assert record.get("endTs") == details.get("endTs")
        assert record["dialogs"] == [{"dialogId": d["dialogId"], "dialogType": d["dialogType"],
                                      "state": d["state"]} for d in details["dialogs"]]
    assert "endTs" not in by_id[current] and "endTs" in by_id[closed]
    assert [d["dialogId"] for d in by_id[surveyed]["dialogs"]] == [surveyed, survey]
    status, body = await fetch(http, "POST", f"{sim.http_url}{METADATA}", headers=headers,
                               json={"state": ["OPEN"]})
    assert [r["conversationId"] for r in body["conversationHistoryMetadataRecords"]] == [current]
    url = f"{sim.http_url}{METADATA}?offset=0&limit=1&sort=start:asc"
    status, body = await fetch(http, "POST", url, headers=headers, json={"state": ["CLOSE"]})
    assert body["_metadata"]["count"] == 2
    assert [r["conversationId"] for r in body["conversationHistoryMetadataRecords"]] == [closed]
    status, body = await fetch(http, "POST", body["_metadata"]["next"]["href"], headers=headers,
                               json={"state": ["CLOSE"]})
    assert [r["conversationId"] for r in body["conversationHistoryMetadataRecords"]] == [surveyed]
    assert "next" not in body["_metadata"]
    status, _ = await fetch(http, "POST", f"{sim.http_url}{METADATA}", headers=headers,
                            json={"state": ["PENDING"]})
    assert status == 400
    assert sim.rest_requests[0][:3] == ("history_metadata", consumer, 200)


# -- REST faults ---------------------------------------------------------------------------------


async def test_every_kth_rest_request_gets_429_and_503(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    conv = sim.create_conversation(consumer)
    sim.consumer_message(conv, "hi")
    sim.faults.rest_reject_every = 3
    sim.faults.rest_server_error_every = 4
    profile = f"{sim.http_url}/api/account/{ACCOUNT}/configuration/le-users/users/" \
              f"{sim.world.agents[0]}"
    content = f"{sim.http_url}{CONTENT}?conversationId={conv}"
    statuses = []
    for i in range(12):
        if i % 3 == 0:
            status, body = await fetch(http, "GET", profile)
        elif i % 3 == 1:
            status, body = await fetch(http, "GET", content, headers=auth(sim.token_for(consumer)))
        else:
            status, body = await fetch(http, "POST", f"{sim.http_url}{METADATA}",
                                       headers=auth(sim.token_for(consumer)))
        if status != 200:
            assert body["code"] == status and isinstance(body["message"], str)
        statuses.append(status)
    assert statuses == [200, 200, 429, 503, 200, 429, 200, 503, 429, 200, 200, 429]
    assert [r.status for r in sim.rest_requests] == statuses
    # The websocket's own counter is apart, and the switches act at once when flipped.
    assert sim.request_count == 0
    sim.faults.rest_reject_every = 1
    assert (await fetch(http, "GET", profile))[0] == 429
    sim.faults.rest_reject_every = None
    sim.faults.rest_server_error_every = None
    assert [(await fetch(http, "GET", profile))[0] for _ in range(5)] == [200] * 5


async def test_partial_pages_lose_records_but_keep_the_count(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    conv = sim.create_conversation(consumer)
    for i in range(10):
        sim.consumer_message(conv, f"m{i}")
    truth = history_truth(sim, conv)
    headers = auth(sim.token_for(consumer))
    sim.faults.history_partial_probability = 1.0
    for offset in (0, 5):
        url = f"{sim.http_url}{CONTENT}?conversationId={conv}&offset={offset}&limit=5"
        status, body = await fetch(http, "GET", url, headers=headers)
        page = body["messageEventRecords"]
        assert status == 200 and body["_metadata"]["count"] == 10
        assert 1 <= len(page) <= 4
        expected = truth[offset : offset + 5]
        assert [r for r in expected if r in page] == page  # a subsequence, still in order
    one = f"{sim.http_url}{CONTENT}?conversationId={conv}&offset=9&limit=5"
    assert len((await fetch(http, "GET", one, headers=headers))[1]["messageEventRecords"]) == 1
    sim.faults.history_partial_probability = 0.0
    url = f"{sim.http_url}{CONTENT}?conversationId={conv}&limit=5"
    assert (await fetch(http, "GET", url, headers=headers))[1]["messageEventRecords"] \
        == truth[:5]


async def test_rest_journal_follows_keep_journal(http: aiohttp.ClientSession) -> None:
    async with Simulator(account=ACCOUNT, seed=3, keep_journal=False) as quiet:
        url = f"{quiet.http_url}/api/account/{ACCOUNT}/configuration/le-users/users/" \
              f"{quiet.world.agents[0]}"
        assert (await fetch(http, "GET", url))[0] == 200
        assert quiet.rest_requests == [] and quiet.rest_request_count == 1


# -- withholding ---------------------------------------------------------------------------------


async def content_of(sim: Simulator, http: aiohttp.ClientSession, consumer: str,
                     conv: str) -> list[Any]:
    url = f"{sim.http_url}{CONTENT}?conversationId={conv}&limit=100"
    status, body = await fetch(http, "GET", url, headers=auth(sim.token_for(consumer)))
    assert status == 200
    records: list[Any] = body["messageEventRecords"]
    return records


async def subscribed(sim: Simulator, consumer: str, conv: str) -> PlainClient:
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    answer = await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv, "fromSeq": 0})
    assert answer["code"] == 200
    return client


def sequences(changes: list[Any]) -> list[int]:
    return [c["sequence"] for c in changes if "sequence" in c]


async def test_withheld_events_are_neither_pushed_nor_replayed_but_in_the_history(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    conv = sim.create_conversation(consumer)
    live = await subscribed(sim, consumer, conv)
    first = sim.consumer_message(conv, "delivered")
    sim.faults.withhold_probability = 1.0
    hidden = sim.agent_message(conv, "withheld")
    sim.agent_typing(conv)  # not sequenced: still pushed
    sim.faults.withhold_probability = 0.0
    last = sim.agent_message(conv, "delivered too")
    await live.wait_for(lambda f: last in sequences(live.messaging_changes()))
    await live.settle()
    assert sequences(live.messaging_changes()) == [first, last]
    assert any(c["event"]["type"] == "ChatStateEvent" for c in live.messaging_changes())
    stored = sim.stored_events(conv)
    assert sequences(stored) == [first, hidden, last]  # the truth keeps it
    assert sim.withheld_events() == [stored[1]]
    replay = await subscribed(sim, consumer, conv)
    await replay.settle()
    assert replay.messaging_changes() == [stored[0], stored[2]]
    assert await content_of(sim, http, consumer, conv) == history_truth(sim, conv)
    # By hand: an event already delivered is no longer replayed.
    sim.withhold(conv, first)
    third = await subscribed(sim, consumer, conv)
    await third.settle()
    assert third.messaging_changes() == [stored[2]]
    assert sequences(sim.withheld_events()) == [first, hidden]
    with pytest.raises(SimulatorError):
        sim.withhold(conv, 999)
    for client in (live, replay, third):
        await client.close()


async def test_release_withheld_delivers_to_subscribed_sockets(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    alice, bob = sim.new_consumer(), sim.new_consumer()
    conv_a, conv_b = sim.create_conversation(alice), sim.create_conversation(bob)
    client_a, client_b = await subscribed(sim, alice, conv_a), await subscribed(sim, bob, conv_b)
    sim.faults.withhold_probability = 1.0
    held_a = [sim.consumer_message(conv_a, f"a{i}") for i in range(3)]
    held_b = [sim.agent_message(conv_b, "b0")]
    sim.faults.withhold_probability = 0.0
    await client_a.settle()
    assert client_a.messaging_changes() == []
    assert sim.release_withheld(conv_b) == 1
    await client_b.wait_for(lambda f: sequences(client_b.messaging_changes()) == held_b)
    assert sequences(sim.withheld_events()) == held_a  # conv_a still held
    assert client_a.messaging_changes() == []
    assert sim.release_withheld() == 3
    await client_a.wait_for(lambda f: len(client_a.messaging_changes()) == 3)
    assert client_a.messaging_changes() == sim.stored_events(conv_a)
    assert len(client_a.notifications("ms.MessagingEventNotification")) == 1  # one batch
    assert sim.withheld_events() == [] and sim.release_withheld() == 0
    replay = await subscribed(sim, alice, conv_a)
    await replay.settle()
    assert sequences(replay.messaging_changes()) == held_a
    for client in (client_a, client_b, replay):
        await client.close()


async def test_a_withheld_tail_takes_every_later_event_until_released(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    consumer = sim.new_consumer()
    conv = sim.create_conversation(consumer)
    other = sim.create_conversation(sim.new_consumer())
    client = await subscribed(sim, consumer, conv)
    before = sim.consumer_message(conv, "before")
    sim.faults.withhold_tail_probability = 1.0
    sim.consumer_typing(conv)  # a chat state starts no tail
    start = sim.agent_message(conv, "the tail starts here")
    sim.faults.withhold_tail_probability = 0.0
    sim.agent_message(other, "another dialog is not affected")
    sim.faults.unknown_event_probability = 1.0
    sim.consumer_message(conv, "still held")  # and its FutureEvent too
    sim.faults.unknown_event_probability = 0.0
    sim.agent_rich_content(conv)
    await client.settle()
    assert sequences(client.messaging_changes()) == [before]
    tail = sequences(sim.stored_events(conv))[1:]
    assert tail[0] == start and len(tail) == 4
    assert sequences(sim.withheld_events()) == tail
    records = await content_of(sim, http, consumer, conv)
    assert records == history_truth(sim, conv)
    assert len(records) == 4  # before, the tail start, "still held", the card (no FutureEvent)
    assert sim.release_withheld(conv) == 4
    await client.wait_for(lambda f: len(sequences(client.messaging_changes())) == 5)
    after = sim.consumer_message(conv, "after the release")
    await client.wait_for(lambda f: after in sequences(client.messaging_changes()))
    assert client.messaging_changes()[-5:] == sim.stored_events(conv)[1:]
    assert sim.withheld_events() == []
    await client.close()


async def test_withholding_never_shifts_the_model() -> None:
    async def run(withhold: float, tail: float) -> tuple[list[Any], list[Any]]:
        async with Simulator(account=ACCOUNT, seed=9, clock_start_ms=1_732_530_000_000) as s:
            s.faults.withhold_probability = withhold
            s.faults.withhold_tail_probability = tail
            conv = s.create_conversation(s.new_consumer())
            await s.run_storyline(conv, delay_s=0)
            return list(s.history), s.withheld_events()

    plain, none = await run(0.0, 0.0)
    noisy, withheld = await run(0.3, 0.05)
    assert none == [] and withheld != []
    assert plain == noisy
