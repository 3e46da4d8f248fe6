"""recorder.history.messaging_history.MessagingHistory: against the simulator's history (the
stored truth, paged, partial pages) and against small servers for the readings the reference
leaves open (the auth scheme, the older POST form)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from recorder.history.messaging_history import (
    PARTIAL_ATTEMPTS,
    HistoryContent,
    MessagingHistory,
    TokenRefused,
)
from recorder.history.rest import RestClient, RestError
from recorder.simulator import Simulator
from recorder.simulator.rest import RECORD_FIELDS

ACCOUNT = "71234567"
HISTORY_TYPES = ("ContentEvent", "RichContentEvent", "AcceptStatusEvent")
TOKEN = "header.payload.signature"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(account=ACCOUNT, seed=21, auto_reply=False) as s:
        yield s


@pytest.fixture
async def rest() -> AsyncIterator[RestClient]:
    async with aiohttp.ClientSession() as http:
        yield RestClient(http, requests_per_minute=60_000.0, server_error_delays_s=(0.01,))


def history_of(rest: RestClient, url: str) -> MessagingHistory:
    async def base_url() -> str:
        return url

    return MessagingHistory(rest, base_url, ACCOUNT)


def truth(sim: Simulator, conv: str) -> list[dict[str, Any]]:
    """The history the simulator must serve: its stored events of the three types, as records."""
    dialogs = [d["dialogId"] for d in sim.conversation(conv)["dialogs"]]
    return [{key: change[key] for key in RECORD_FIELDS}
            for dialog in dialogs for change in sim.stored_events(dialog)
            if change["event"]["type"] in HISTORY_TYPES]


def content_calls(sim: Simulator) -> list[int]:
    return [r.status for r in sim.rest_requests if r.endpoint == "history_content"]


def chat(sim: Simulator, consumer: str, messages: int) -> str:
    conv = sim.create_conversation(consumer)
    sim.assign_agent(conv)
    for n in range(messages):
        sequence = sim.consumer_message(conv, f"question {n}")
        if n % 10 == 0:
            sim.agent_message(conv, f"answer {n}")
            sim.agent_read(conv, [sequence])
    return conv


async def test_content_is_the_stored_truth_over_several_pages(
    sim: Simulator, rest: RestClient
) -> None:
    consumer = sim.new_consumer()
    conv = chat(sim, consumer, 100)
    sim.agent_rich_content(conv)
    survey = sim.close_conversation(conv, survey=True)
    assert survey is not None
    sim.consumer_receipt(survey, [sim.survey_question(survey)])
    expected = truth(sim, conv)
    assert len(expected) > 120 and {r["dialogId"] for r in expected} == {conv, survey}
    found = await history_of(rest, sim.http_url).content(sim.token_for(consumer), conv,
                                                         [conv, survey])
    assert found.records == expected
    assert (found.expected, found.partial, found.requests) == (len(expected), False, 2)
    assert content_calls(sim) == [200, 200]
    assert {r["event"]["type"] for r in found.records} == set(HISTORY_TYPES)


async def test_a_conversation_the_history_does_not_know_is_empty_and_whole(
    sim: Simulator, rest: RestClient
) -> None:
    consumer = sim.new_consumer()
    found = await history_of(rest, sim.http_url).content(sim.token_for(consumer), "no-such",
                                                         ["no-such"])
    assert found == HistoryContent([], 0, False, 1)


async def test_partial_pages_are_fetched_again_then_reported_partial(
    sim: Simulator, rest: RestClient
) -> None:
    consumer = sim.new_consumer()
    conv = chat(sim, consumer, 10)
    expected = truth(sim, conv)
    sim.faults.history_partial_probability = 1.0
    found = await history_of(rest, sim.http_url).content(sim.token_for(consumer), conv, [conv])
    # Every page loses records, different ones each time: the attempts are combined.
    assert 2 <= found.requests <= PARTIAL_ATTEMPTS
    assert found.requests == len(content_calls(sim))
    assert found.expected == len(expected)
    assert all(r in expected for r in found.records)  # only lost records, none made up
    assert len({orjson.dumps(r) for r in found.records}) == len(found.records)
    assert found.partial == (len(found.records) < len(expected))


async def test_a_history_short_on_every_attempt_is_reported_partial(
    serve: Callable[[History], Awaitable[str]], rest: RestClient
) -> None:
    def short(request: Request) -> tuple[int, Any]:  # counts three, always serves two
        return 200, {"_metadata": {"count": 3}, "messageEventRecords": [message(0), message(1)]}

    server = History(short)
    found = await history_of(rest, await serve(server)).content(TOKEN, "conv", ["conv"])
    assert found.partial is True
    assert found.requests == PARTIAL_ATTEMPTS == len(server.seen)
    assert found.records == [message(0), message(1)] and found.expected == 3


async def test_a_sometimes_partial_history_is_whole_when_it_says_so(
    sim: Simulator, rest: RestClient
) -> None:
    consumer = sim.new_consumer()
    conversations = []
    for _ in range(6):
        conversations.append(chat(sim, consumer, 8))
        sim.close_conversation(conversations[-1], survey=False)  # one open at a time
    sim.faults.history_partial_probability = 0.3
    history = history_of(rest, sim.http_url)
    whole = 0
    for conv in conversations:
        found = await history.content(sim.token_for(consumer), conv, [conv])
        expected = truth(sim, conv)
        assert found.expected == len(expected)
        assert 1 <= found.requests <= PARTIAL_ATTEMPTS
        if found.partial:
            assert len(found.records) < len(expected)
        else:
            order = sorted(found.records, key=lambda r: (r["dialogId"], r["sequence"]))
            assert order == sorted(expected, key=lambda r: (r["dialogId"], r["sequence"]))
            whole += 1
    assert whole >= 3  # 0.3 per try, three tries: almost always whole
    assert len(content_calls(sim)) > len(conversations)  # some were fetched again


async def test_a_token_refused_in_every_form_raises_token_refused(
    sim: Simulator, rest: RestClient
) -> None:
    consumer = sim.new_consumer()
    conv = chat(sim, consumer, 2)
    expired = sim.issue_token(consumer, ttl_s=-30)
    with pytest.raises(TokenRefused) as raised:
        await history_of(rest, sim.http_url).content(expired, conv, [conv])
    assert isinstance(raised.value, RestError) and raised.value.status == 401
    assert expired not in str(raised.value)
    assert content_calls(sim) == [401, 401]  # jwt, then Bearer


# -- small servers: the readings protocol.md 12a leaves open ------------------------------------


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    body: Any


class History:
    """A history that answers by a rule; it records what it was sent."""

    def __init__(self, answer: Callable[[Request], tuple[int, Any]]) -> None:
        self.answer = answer
        self.seen: list[Request] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        seen = Request(request.method, request.path, dict(request.query),
                       request.headers.get("Authorization"), orjson.loads(raw) if raw else None)
        self.seen.append(seen)
        status, body = self.answer(seen)
        return web.json_response(body, status=status)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[History], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(history: History) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", history.handle)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


def page(*records: dict[str, Any]) -> dict[str, Any]:
    return {"_metadata": {"count": len(records)}, "messageEventRecords": list(records)}


def message(sequence: int, text: str = "hi") -> dict[str, Any]:
    return {"sequence": sequence, "originatorId": "c-1", "serverTimestamp": 1_700_000_000_000,
            "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text}}


CONTENT_PATH = (f"/messaging_history/api/account/{ACCOUNT}/conversations/conversation/content/"
                "search")


async def test_the_client_switches_to_bearer_and_keeps_it(
    serve: Callable[[History], Awaitable[str]], rest: RestClient
) -> None:
    def bearer_only(request: Request) -> tuple[int, Any]:
        if request.authorization != f"Bearer {TOKEN}":
            return 401, {"code": 401}
        if request.path.endswith("/consumer/metadata/search"):
            return 200, {"_metadata": {"count": 1},
                         "conversationHistoryMetadataRecords": [{"conversationId": "conv"}]}
        return 200, page(message(1), message(2))

    server = History(bearer_only)
    history = history_of(rest, await serve(server))
    first = await history.content(TOKEN, "conv", ["conv"])
    assert first.records == [message(1), message(2)] and first.requests == 2
    assert [r.authorization for r in server.seen] == [f"jwt {TOKEN}", f"Bearer {TOKEN}"]
    assert server.seen[0].path == CONTENT_PATH
    assert server.seen[0].query == {"conversationId": "conv", "offset": "0", "limit": "100",
                                    "sort": "start:asc"}
    del server.seen[:]
    second = await history.content(TOKEN, "conv", ["conv"])
    assert second.requests == 1
    records, count, requests = await history.conversations(TOKEN)
    assert (records, count, requests) == ([{"conversationId": "conv"}], 1, 1)
    assert [r.authorization for r in server.seen] == [f"Bearer {TOKEN}"] * 2


async def test_a_history_that_refuses_get_is_asked_by_post_per_dialog(
    serve: Callable[[History], Awaitable[str]], rest: RestClient
) -> None:
    by_dialog = {"conv": [message(1), message(2, "bye")],
                 "survey": [message(1, "rate us"), {**message(2), "dialogId": "stated"}]}

    def post_only(request: Request) -> tuple[int, Any]:
        if request.method == "GET":
            return 405, {"code": 405}
        return 200, page(*by_dialog[request.body["dialogId"]])

    server = History(post_only)
    history = history_of(rest, await serve(server))
    found = await history.content(TOKEN, "conv", ["conv", "survey"])
    assert found.records == [
        {**message(1), "dialogId": "conv"}, {**message(2, "bye"), "dialogId": "conv"},
        {**message(1, "rate us"), "dialogId": "survey"},
        {**message(2), "dialogId": "stated"},  # a record's own dialogId is kept
    ]
    assert (found.expected, found.partial) == (4, False)
    assert [(r.method, r.body) for r in server.seen] == [
        ("GET", None), ("POST", {"dialogId": "conv"}), ("POST", {"dialogId": "survey"})]
    assert server.seen[1].path == CONTENT_PATH
    assert "conversationId" not in server.seen[1].query
    del server.seen[:]
    # The form that worked is kept; without known dialogs the conversation id is the dialog.
    again = await history.content(TOKEN, "conv", [])
    assert [(r.method, r.body) for r in server.seen] == [("POST", {"dialogId": "conv"})]
    assert [r["dialogId"] for r in again.records] == ["conv", "conv"]


async def test_requests_counts_the_get_refused_before_the_post_form(
    serve: Callable[[History], Awaitable[str]], rest: RestClient
) -> None:
    server = History(lambda r: (405, {}) if r.method == "GET" else (200, page(message(1))))
    found = await history_of(rest, await serve(server)).content(TOKEN, "conv", ["conv"])
    assert len(server.seen) == rest.requests == 2
    assert found.requests == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_a_token_refused_by_a_small_server_in_both_forms(
    serve: Callable[[History], Awaitable[str]], rest: RestClient, status: int
) -> None:
    server = History(lambda _: (status, {"code": status}))
    with pytest.raises(TokenRefused) as raised:
        await history_of(rest, await serve(server)).content(TOKEN, "conv", ["conv"])
    assert [r.authorization for r in server.seen] == [f"jwt {TOKEN}", f"Bearer {TOKEN}"]
    assert TOKEN not in str(raised.value)


async def test_an_answer_that_is_not_a_page_is_an_error(
    serve: Callable[[History], Awaitable[str]], rest: RestClient
) -> None:
    server = History(lambda _: (200, ["not", "an", "object"]))
    with pytest.raises(RestError) as raised:
        await history_of(rest, await serve(server)).content(TOKEN, "conv", ["conv"])
    assert raised.value.endpoint == "history_content"
