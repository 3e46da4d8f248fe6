"""recorder's UMS client against the simulator: requests, tokens, discovery, the sessions ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.eventlog.ledger import DatabaseSessionLedger
from recorder.simulator import Simulator
from recorder.ums import frames
from recorder.ums.discovery import Discovery, DiscoveryError, base_uri_from_reply
from recorder.ums.pacing import TokenBucket
from recorder.ums.tokens import (
    FileTokenSource,
    SignupTokenSource,
    StaticTokenSource,
    TokenError,
    decode_token,
)
from tests.protocol_files import load_validator
from tests.ums.harness import ACCOUNT, FAST, connected, converged, recording, static_tokens, truth


async def test_records_a_whole_conversation_including_its_survey_dialog() -> None:
    async with Simulator(account=ACCOUNT, seed=5) as sim:
        consumer = sim.new_consumer()
        conversation = sim.create_conversation(consumer)
        async with recording(sim, static_tokens(sim, consumer)) as (client, sink, subscriber):
            await connected(client)
            await sim.run_storyline(conversation, ending="survey")
            await converged(sim, consumer, sink)
            dialogs = {dialog for dialog, _ in truth(sim, consumer)}
            assert len(dialogs) == 2, "the MAIN and the POST_SURVEY dialog"
            assert set(subscriber.dialogs) >= dialogs
            assert sink.chat_states, "typing is delivered live"
        assert client.connections == 1 and sink.duplicates == 0


async def test_resumes_from_the_stored_cursor_after_a_reconnect() -> None:
    async with Simulator(account=ACCOUNT, seed=6) as sim:
        consumer = sim.new_consumer()
        conversation = sim.create_conversation(consumer)
        for n in range(5):
            sim.consumer_message(conversation, f"before {n}")
        async with recording(sim, static_tokens(sim, consumer)) as (_, sink, _):
            await converged(sim, consumer, sink)
            sim.drop_connections()
            for n in range(5):
                sim.agent_message(conversation, f"while away {n}")
            await converged(sim, consumer, sink)
        subscribes = [
            f.frame["body"] for f in sim.received
            if isinstance(f.frame, dict)
            and f.frame.get("type") == frames.SUBSCRIBE_MESSAGING_EVENTS
        ]
        assert subscribes[0]["fromSeq"] == 0
        first_batch = max(seq for (_, seq) in truth(sim, consumer) if seq < 5)
        assert subscribes[-1]["fromSeq"] == first_batch + 1, "fromSeq = last stored + 1"
        assert sink.duplicates == 0, "nothing replayed twice"


async def test_every_request_type_and_the_requests_validate_against_the_schemas() -> None:
    async with Simulator(account=ACCOUNT, seed=7) as sim:
        consumer = sim.new_consumer()
        async with recording(sim, static_tokens(sim, consumer)) as (client, sink, _):
            connection = await connected(client)
            clock = await connection.request(frames.GET_CLOCK)
            assert isinstance(clock.body["currentTime"], int)
            created = await connection.request(
                frames.CONSUMER_REQUEST_CONVERSATION,
                {"brandId": ACCOUNT, "skillId": "-1", "channelType": "MESSAGING"},
            )
            conversation = created.body["conversationId"]
            published = await connection.request(
                frames.PUBLISH_EVENT,
                {"dialogId": conversation, "conversationId": conversation,
                 "event": {"type": "ContentEvent", "contentType": "text/plain", "message": "hi"}},
            )
            sequence = published.body["sequence"]
            await connection.request(
                frames.PUBLISH_EVENT,
                {"dialogId": conversation, "event": {"type": "ChatStateEvent",
                                                     "chatState": "COMPOSING"}},
            )
            await connection.request(
                frames.PUBLISH_EVENT,
                {"dialogId": conversation, "event": {"type": "AcceptStatusEvent",
                                                     "status": "READ", "sequenceList": [sequence]}},
            )
            await connection.request(
                frames.UPDATE_CONVERSATION_FIELD,
                {"conversationId": conversation, "conversationField": [
                    {"field": "TTRField", "ttrType": "URGENT", "value": 600}]},
            )
            subscribed = await connection.request(
                frames.SUBSCRIBE_EX_CONVERSATIONS, {"convState": ["OPEN"], "minLastUpdatedTime": 0}
            )
            await connection.request(
                frames.UNSUBSCRIBE_EX_CONVERSATIONS,
                {"subscriptionId": subscribed.body["subscriptionId"]},
            )
            upload = await connection.request(
                frames.GENERATE_UPLOAD_URL, {"fileSize": "1000", "fileType": "PNG"}
            )
            await connection.request(
                frames.GENERATE_DOWNLOAD_URL, {"relativePath": upload.body["relativePath"]}
            )
            await connection.request(
                frames.UPDATE_CONVERSATION_FIELD,
                {"conversationId": conversation, "conversationField": [
                    {"field": "ConversationStateField", "conversationState": "CLOSE"}]},
            )
            await connection.request(
                frames.UPDATE_CONVERSATION_FIELD,
                {"conversationId": conversation, "conversationField": [
                    {"field": "CSATRate", "csatRate": 5, "csatResolutionConfirmation": True,
                     "status": "FILLED"}]},
            )
            await converged(sim, consumer, sink)
            echoed = sink.events[(conversation, sequence)]
            assert echoed["event"]["message"] == "hi", "our own event comes back as the echo"
            details = sim.conversation(conversation)
            assert details["state"] == "CLOSE" and details["csat"]["csatRate"] == 5
    assert_requests_validate([f.frame for f in sim.received])


def assert_requests_validate(requests: list[Any]) -> None:
    validate = load_validator()  # LivePerson's schemas, tests/protocol/schemas
    checked = 0
    for request in requests:
        try:
            errors = validate.validate_frame(request)
        except validate.NoSchema:
            assert request["type"] == frames.GET_CLOCK, f"no schema for {request['type']}"
            continue
        assert errors == [], f"{request['type']}: {errors}"
        checked += 1
    assert checked >= 8


async def test_header_less_sessions_authenticate_with_init_connection() -> None:
    async with Simulator(account=ACCOUNT, seed=8) as sim:
        consumer = sim.new_consumer()
        sim.consumer_message(sim.create_conversation(consumer), "hello")
        settings = dataclasses.replace(FAST, use_init_connection=True)
        async with recording(sim, static_tokens(sim, consumer), settings=settings) as (_, sink, _):
            await converged(sim, consumer, sink)
        first = next(f.frame for f in sim.received if isinstance(f.frame, dict))
        assert first["type"] == frames.INIT_CONNECTION


async def test_close_4401_rereads_the_token_file_and_carries_on(tmp_path: Path) -> None:
    async with Simulator(account=ACCOUNT, seed=9) as sim:
        consumer = sim.new_consumer()
        conversation = sim.create_conversation(consumer)
        token_file = tmp_path / "jwt"
        token_file.write_text(sim.issue_token(consumer))
        tokens = FileTokenSource("file", token_file)
        async with recording(sim, tokens) as (client, sink, _):
            await connected(client)
            fresh = sim.issue_token(consumer, ttl_s=7200)
            token_file.write_text(fresh + "\n")
            await sim.close_connections(4401, "token expired")
            sim.agent_message(conversation, "after the refresh")
            await converged(sim, consumer, sink)
            assert (await tokens.current()).value == fresh
        assert any(c.code == 4401 for c in client.closes)
        assert client.token_refreshes >= 1 and client.connections >= 2


async def test_close_4407_signs_up_again() -> None:
    async with Simulator(account=ACCOUNT, seed=10) as sim, aiohttp.ClientSession() as http:

        async def idp_url() -> str:
            return sim.http_url

        tokens = SignupTokenSource("signup", ACCOUNT, http, idp_url)
        first = await tokens.current()
        assert first.unauthenticated and first.expires_at is not None
        async with recording(sim, tokens) as (client, _, _):
            await connected(client)
            await sim.close_connections(4407, "identity expired")
            deadline = time.monotonic() + 10
            while client.connections < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        second = await tokens.current()
        assert second.sub != first.sub, "signup makes a new identity"


async def test_an_expired_token_gets_401_on_upgrade_then_a_fresh_one(tmp_path: Path) -> None:
    async with Simulator(account=ACCOUNT, seed=12) as sim:
        consumer = sim.new_consumer()
        sim.consumer_message(sim.create_conversation(consumer), "hello")
        token_file = tmp_path / "jwt"
        token_file.write_text(sim.issue_token(consumer, ttl_s=-10))
        tokens = FileTokenSource("file", token_file)
        async with recording(sim, tokens) as (client, sink, _):
            await asyncio.sleep(0.3)
            assert client.connections == 0, "an expired token must not get in"
            token_file.write_text(sim.issue_token(consumer))
            await converged(sim, consumer, sink)
        assert client.token_refreshes >= 1


async def test_the_token_is_renewed_before_it_expires(tmp_path: Path) -> None:
    async with Simulator(account=ACCOUNT, seed=13) as sim:
        consumer = sim.new_consumer()
        sim.consumer_message(sim.create_conversation(consumer), "hello")
        token_file = tmp_path / "jwt"
        token_file.write_text(sim.issue_token(consumer, ttl_s=2.5))
        settings = dataclasses.replace(FAST, renew_before=1.5)
        async with recording(sim, FileTokenSource("file", token_file), settings=settings) as (
            client, sink, _,
        ):
            await connected(client)
            token_file.write_text(sim.issue_token(consumer, ttl_s=3600))
            deadline = time.monotonic() + 10
            while client.connections < 2:
                assert time.monotonic() < deadline, "no renewal before exp"
                await asyncio.sleep(0.05)
            await converged(sim, consumer, sink)
        assert client.closes[0].by_client and client.closes[0].reason == "token renewal"
        assert not any(c.code in (4401, 4407) for c in client.closes)


async def test_tokens_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Simulator(account=ACCOUNT, seed=14) as sim:
        consumer = sim.new_consumer()
        conversation = sim.create_conversation(consumer)
        issued = [sim.issue_token(consumer)]
        token_file = tmp_path / "jwt"
        token_file.write_text(issued[0])
        tokens = FileTokenSource("file", token_file)
        async with recording(sim, tokens) as (client, sink, _):
            await connected(client)
            issued.append(sim.issue_token(consumer, ttl_s=7200))
            token_file.write_text(issued[-1])
            await sim.close_connections(4401, "token expired")
            sim.agent_message(conversation, "hello")
            await converged(sim, consumer, sink)
        token = await tokens.current()
    text = "\n".join(
        record.getMessage() + (record.exc_text or "") for record in caplog.records
    )
    assert caplog.records, "the run should have logged something"
    for value in issued:
        assert value not in text
        assert value.split(".")[2] not in text  # not even the signature part
    assert token.value not in repr(token) and token.value not in str(token)
    with pytest.raises(TokenError) as caught:
        decode_token("not-a-jwt-" + issued[0][:20])
    assert issued[0][:20] not in str(caught.value)


async def test_static_tokens_are_decoded_for_their_identity() -> None:
    async with Simulator(account=ACCOUNT, seed=15) as sim:
        consumer = sim.new_consumer()
        source = StaticTokenSource("static", sim.issue_token(consumer))
        token = await source.current()
        assert token.sub == consumer and token.seconds_left() is not None


@pytest.mark.parametrize("list_shape", [False, True])
async def test_discovery_finds_ums_and_idp_in_both_reply_shapes(list_shape: bool) -> None:
    async with Simulator(account=ACCOUNT, seed=16) as sim, aiohttp.ClientSession() as http:
        sim.csds_list_shape = list_shape
        discovery = Discovery(sim.http_url, ACCOUNT, http)
        assert await discovery.ums_url() == sim.ws_url
        assert await discovery.idp_url() == sim.http_url
        consumer = sim.new_consumer()
        sim.consumer_message(sim.create_conversation(consumer), "hello")
        async with recording(sim, static_tokens(sim, consumer)) as (_, sink, _):
            await converged(sim, consumer, sink)


async def test_discovery_caches_and_survives_a_lookup_outage() -> None:
    async with aiohttp.ClientSession() as http:
        async with Simulator(account=ACCOUNT, seed=17) as sim:
            discovery = Discovery(sim.http_url, ACCOUNT, http)
            first = await discovery.ums_url()
        # The simulator is gone: the cached host still answers.
        assert await discovery.ums_url() == first
        with pytest.raises(DiscoveryError):
            await Discovery("http://127.0.0.1:1", ACCOUNT, http).ums_url()


def test_base_uri_reply_shapes() -> None:
    single = {"service": "asyncMessagingEnt", "account": ACCOUNT, "baseURI": "va.msg.example"}
    listed = {"baseURIs": [{"service": "idp", "baseURI": "va.idp.example"},
                           {"service": "asyncMessagingEnt", "baseURI": "va.msg.example"}]}
    assert base_uri_from_reply("asyncMessagingEnt", single) == "va.msg.example"
    assert base_uri_from_reply("asyncMessagingEnt", listed) == "va.msg.example"
    with pytest.raises(DiscoveryError):
        base_uri_from_reply("asyncMessagingEnt", {"baseURIs": []})


async def test_every_session_is_recorded_in_the_sessions_table(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=2)
    try:
        async with Simulator(account=ACCOUNT, seed=18) as sim:
            consumer = sim.new_consumer()
            sim.consumer_message(sim.create_conversation(consumer), "hello")
            ledger = DatabaseSessionLedger(pool, ACCOUNT)
            async with recording(sim, static_tokens(sim, consumer), ledger=ledger) as (
                client, sink, _,
            ):
                await converged(sim, consumer, sink)
                await asyncio.sleep(FAST.clock_interval * 2.5)  # a GetClock round trip or two
                await sim.close_connections(1011, "server restarting")
                deadline = time.monotonic() + 10
                while client.connections < 2:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                await connected(client)
    finally:
        await pool.close()
    rows = await db.fetch("SELECT * FROM sessions ORDER BY opened_at")
    assert len(rows) == client.connections
    first = rows[0]
    assert (first["account_id"], first["consumer_id"]) == (ACCOUNT, consumer)
    assert first["close_code"] == 1011 and first["close_reason"] == "server restarting"
    assert first["frames"] > 0 and first["events"] > 0
    assert first["last_clock_rtt_ms"] is not None and first["closed_at"] is not None
    assert {str(r["session_id"]) for r in rows} >= sink.sessions


async def test_the_token_bucket_paces_requests() -> None:
    bucket = TokenBucket(rate_per_s=20, burst=2)
    started = time.monotonic()
    for _ in range(6):
        await bucket.acquire()
    # two from the burst, four more at 20/s: at least 0.2 s, whatever the machine
    assert time.monotonic() - started >= 0.19
    bucket.hold(0.3)
    held = time.monotonic()
    await bucket.acquire()
    assert time.monotonic() - held >= 0.3
