"""The UMS simulator against a plain aiohttp client: endpoints, auth, requests, subscriptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from recorder.simulator import Simulator
from tests.simclient import PlainClient

ACCOUNT = "71234567"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(account=ACCOUNT, seed=1, auto_reply=False, reply_delay_s=0.01) as s:
        yield s


@pytest.fixture
async def consumer(sim: Simulator) -> str:
    return sim.new_consumer()


@pytest.fixture
async def client(sim: Simulator, consumer: str) -> AsyncIterator[PlainClient]:
    c = await PlainClient.connect(sim, sim.issue_token(consumer))
    yield c
    await c.close()


def claims(token: str) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# -- REST: IdP and CSDS -------------------------------------------------------------------------


async def test_signup_returns_an_unauthenticated_jwt_with_sub_and_exp(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{sim.http_url}/api/account/{ACCOUNT}/signup"
        async with http.post(url) as reply:
            assert reply.status == 200
            token = (await reply.json())["jwt"]
        async with http.post(url) as reply:
            second = (await reply.json())["jwt"]
        async with http.post(f"{sim.http_url}/api/account/999/signup") as reply:
            assert reply.status == 404
    payload = claims(token)
    assert payload["iss"] == "recorder-simulator" and payload["lp_unauth"] is True
    assert isinstance(payload["exp"], int) and payload["exp"] > time.time() + 3000
    assert claims(second)["sub"] != payload["sub"]
    assert sim.tokens.verify(token).unauthenticated


async def test_csds_answers_both_shapes_and_404_for_unknown_services(sim: Simulator) -> None:
    base = f"{sim.http_url}/api/account/{ACCOUNT}/service"
    host = f"127.0.0.1:{sim.port}"
    async with aiohttp.ClientSession() as http:
        for service in ("asyncMessagingEnt", "idp"):
            async with http.get(f"{base}/{service}/baseURI.json?version=1.0") as reply:
                assert await reply.json() == {"service": service, "account": ACCOUNT,
                                              "baseURI": host}
        sim.csds_list_shape = True
        async with http.get(f"{base}/idp/baseURI.json?version=1.0") as reply:
            assert await reply.json() == {
                "baseURIs": [{"service": "idp", "account": ACCOUNT, "baseURI": host}]
            }
        async with http.get(f"{base}/nope/baseURI.json?version=1.0") as reply:
            assert reply.status == 404


# -- the websocket upgrade ----------------------------------------------------------------------


async def upgrade_status(sim: Simulator, path: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(f"{sim.ws_url}{path}", headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_upgrade_is_refused_with_401_on_bad_or_expired_tokens(sim: Simulator) -> None:
    path = f"/ws_api/account/{ACCOUNT}/messaging/consumer?v=3"
    async with Simulator(account=ACCOUNT, seed=1) as other:
        foreign = other.issue_token()  # well formed, signed with another secret
    expired = sim.issue_token(ttl_s=-30)
    good = sim.issue_token()
    for token in (foreign, expired, "garbage"):
        assert await upgrade_status(sim, path, {"Authorization": f"jwt {token}"}) == 401
    assert await upgrade_status(sim, path, {"Authorization": f"Bearer {good}"}) == 401
    assert await upgrade_status(sim, path, {"Authorization": f"JWT {good}"}) == 101
    wrong_account = "/ws_api/account/999/messaging/consumer?v=3"
    assert await upgrade_status(sim, wrong_account, {"Authorization": f"jwt {good}"}) == 404
    for version in ("", "?v=2"):
        no_version = f"/ws_api/account/{ACCOUNT}/messaging/consumer{version}"
        assert await upgrade_status(sim, no_version, {"Authorization": f"jwt {good}"}) == 400


async def test_init_connection_authenticates_a_headerless_socket(
    sim: Simulator, consumer: str
) -> None:
    c = await PlainClient.connect(sim, None, features=None)
    try:
        early = await c.request("GetClock")
        assert early["code"] == 401 and isinstance(early["body"], str)
        headers = [
            {"type": ".ams.headers.ClientProperties", "features": ["MULTI_DIALOG"]},
            {"type": ".ams.headers.ConsumerAuthentication", "jwt": sim.issue_token(consumer)},
        ]
        answer = await c.request("InitConnection", headers=headers)
        assert answer["code"] == 200
        (conn,) = sim.server.hub.connections.values()
        assert conn.consumer == consumer and conn.multi_dialog
        assert (await c.request("GetClock"))["code"] == 200
    finally:
        await c.close()


async def test_no_init_connection_within_the_grace_period_closes_4401(sim: Simulator) -> None:
    sim.init_timeout_s = 0.2
    c = await PlainClient.connect(sim, None)
    assert await c.wait_closed() == 4401
    await c.close()


async def test_bad_token_in_init_connection_is_401_then_close(sim: Simulator) -> None:
    c = await PlainClient.connect(sim, None)
    expired = sim.issue_token(ttl_s=-30, unauthenticated=True)
    header = {"type": ".ams.headers.ConsumerAuthentication", "jwt": expired}
    assert (await c.request("InitConnection", headers=[header]))["code"] == 401
    assert await c.wait_closed() == 4407
    await c.close()


async def test_token_expiry_closes_4401_or_4407_for_signup_identities(sim: Simulator) -> None:
    authenticated = await PlainClient.connect(sim, sim.issue_token(ttl_s=0.5))
    anonymous = await PlainClient.connect(sim, sim.issue_token(ttl_s=0.5, unauthenticated=True))
    codes = await asyncio.gather(authenticated.wait_closed(4), anonymous.wait_closed(4))
    assert codes == [4401, 4407]
    await asyncio.gather(authenticated.close(), anonymous.close())


# -- requests ----------------------------------------------------------------------------------


async def test_get_clock_keepalive_and_junk(sim: Simulator, client: PlainClient) -> None:
    before = int(time.time() * 1000)
    clock = await client.request("GetClock")
    assert clock["type"] == ".GetClock$Response" and clock["code"] == 200
    assert before - 1000 <= clock["body"]["currentTime"] <= int(time.time() * 1000) + 1000
    assert (await client.request("KeepAlive"))["code"] == 200
    await client.send("this is not JSON")
    await client.send("[1, 2]")
    await client.send({"kind": "req", "id": 77, "type": "GetClock"})
    numeric = await client.response("77")
    assert numeric["code"] == 200
    unknown = await client.request("cm.NoSuchThing", {})
    assert unknown["code"] == 400 and isinstance(unknown["body"], str)
    assert len(sim.received) == 6 and sim.received[2].frame is None


async def test_request_conversation_once_then_400(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    first = await client.request("cm.ConsumerRequestConversation")
    assert first["type"] == "cm.RequestConversationResponse"
    conv = first["body"]["conversationId"]
    assert sim.conversation(conv)["state"] == "OPEN"
    assert sim.dialog_ids(consumer) == [conv]
    second = await client.request("cm.ConsumerRequestConversation", {"skillId": "-1"})
    assert second["code"] == 400 and isinstance(second["body"], str)
    assert (await client.request("cm.ConsumerRequestConversation", {"brandId": "9"}))["code"] == 400


async def test_ex_conversations_snapshot_empty_then_live_upserts(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    answer = await client.request(
        "cqm.SubscribeExConversations", {"minLastUpdatedTime": 0, "convState": ["OPEN", "CLOSE"]}
    )
    sub_id = answer["body"]["subscriptionId"]
    snapshot = await client.wait_for(lambda f: f.get("kind") == "notification")
    assert snapshot["body"] == {"subscriptionId": sub_id, "changes": []}
    conv = sim.create_conversation(consumer)
    sim.assign_agent(conv)
    sim.set_ttr(conv, "URGENT", 300)
    await client.wait_for(lambda f: len(client.ex_changes()) == 3)
    changes = client.ex_changes()
    assert [c["type"] for c in changes] == ["UPSERT"] * 3
    stamps = [c["result"]["conversationDetails"]["metaDataLastUpdateTs"] for c in changes]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    joined = changes[1]["result"]["conversationDetails"]
    assert {p["role"] for p in joined["participants"]} == {"CONSUMER", "ASSIGNED_AGENT"}
    assert changes[2]["result"]["conversationDetails"]["ttr"] == {"ttrType": "URGENT",
                                                                   "value": 300}
    assert changes[2]["result"]["conversationDetails"] == sim.conversation(conv)
    assert (await client.request("cqm.UnsubscribeExConversations",
                                 {"subscriptionId": sub_id}))["code"] == 200
    sim.set_ttr(conv, "NORMAL", 3600)
    await client.settle()
    assert len(client.ex_changes()) == 3


async def test_ex_conversations_snapshot_filter_and_delete_on_leaving_it(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    old = sim.create_conversation(consumer)
    sim.close_conversation(old, by="AGENT", survey=False)
    conv = sim.create_conversation(consumer)
    await client.request("cqm.SubscribeExConversations", {"convState": ["OPEN"]})
    snapshot = await client.wait_for(lambda f: f.get("kind") == "notification")
    assert [c["result"]["convId"] for c in snapshot["body"]["changes"]] == [conv]
    future = int(time.time() * 1000) + 10**9
    await client.request("cqm.SubscribeExConversations", {"minLastUpdatedTime": future})
    await client.wait_for(lambda f: len(client.notifications()) == 2)
    assert client.notifications()[1]["body"]["changes"] == []
    everything = (await client.request("cqm.SubscribeExConversations", {}))["body"]
    sim.close_conversation(conv, by="CONSUMER", survey=False)
    await client.wait_for(lambda f: any(c["type"] == "DELETE" for c in client.ex_changes()))
    delete = next(c for c in client.ex_changes() if c["type"] == "DELETE")
    assert delete["result"]["convId"] == conv
    assert delete["result"]["conversationDetails"]["state"] == "CLOSE"
    # The unfiltered subscription sees the close as an UPSERT; the future-dated one nothing.
    await client.wait_for(lambda f: len(client.notifications()) == 5)
    last = client.notifications()[-1]["body"]
    assert last["subscriptionId"] == everything["subscriptionId"]
    assert last["changes"][0]["type"] == "UPSERT"
    assert last["changes"][0]["result"]["conversationDetails"]["state"] == "CLOSE"


async def test_messaging_replay_from_zero_and_from_k_then_live(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    conv = sim.create_conversation(consumer)
    await sim.run_storyline(conv, ending="open", delay_s=0)
    stored = sim.stored_events(conv)
    assert stored[0]["sequence"] == 0 and len(stored) >= 12
    answer = await client.request("ms.SubscribeMessagingEvents",
                                  {"dialogId": conv, "conversationId": conv, "fromSeq": 0})
    assert answer["type"] == "GenericSubscribeResponse" and answer["body"] == {}
    await client.wait_for(lambda f: len(client.messaging_changes()) == len(stored))
    assert client.messaging_changes() == stored
    k = stored[5]["sequence"]
    mark = len(client.frames)
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv, "fromSeq": k})
    await client.wait_for(lambda f: f.get("type") == "ms.MessagingEventNotification", start=mark)
    replay = client.notifications("ms.MessagingEventNotification")[-1]["body"]["changes"]
    assert replay == stored[5:]
    assert all("sequence" in c for c in client.messaging_changes())  # no ChatState replayed
    sequence = sim.agent_message(conv, "live one")
    sim.agent_typing(conv)
    live = await client.wait_for(lambda f: f.get("type") == "ms.MessagingEventNotification"
                                 and f["body"]["changes"][0]["event"]["type"] == "ChatStateEvent")
    change = live["body"]["changes"][0]
    assert "sequence" not in change and "serverTimestamp" not in change
    assert client.messaging_changes()[-2]["sequence"] == sequence
    assert sim.stored_events(conv)[-1]["sequence"] == sequence


async def test_replay_comes_in_notifications_of_at_most_50(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    conv = sim.create_conversation(consumer)
    for i in range(120):
        sim.consumer_message(conv, f"m{i}")
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
    await client.wait_for(lambda f: len(client.messaging_changes()) == 120)
    sizes = [len(f["body"]["changes"]) for f in client.notifications()]
    assert sizes == [50, 50, 20]
    sequences = [c["sequence"] for c in client.messaging_changes()]
    assert sequences == sorted(sequences) and sequences[0] == 0
    assert sequences[-1] > 119  # seeded gaps: events this consumer cannot see


async def test_publish_stores_echoes_to_every_subscribed_socket_and_answers_sequence(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    other = await PlainClient.connect(sim, sim.issue_token(consumer))
    stranger = await PlainClient.connect(sim, sim.issue_token())
    try:
        conv = (await client.request("cm.ConsumerRequestConversation"))["body"]["conversationId"]
        for c in (client, other):
            await c.request("ms.SubscribeMessagingEvents", {"dialogId": conv, "fromSeq": 0})
        text = {"type": "ContentEvent", "contentType": "text/plain", "message": "hi"}
        answer = await client.request("ms.PublishEvent", {"dialogId": conv, "event": text},
                                      metadata=[{"type": "ExternalId", "id": "x-1"}])
        assert answer["type"] == "ms.PublishEventResponse"
        sequence = answer["body"]["sequence"]
        for c in (client, other):
            echo = await c.wait_for(lambda f: f.get("kind") == "notification")
            change = echo["body"]["changes"][0]
            assert change["sequence"] == sequence and change["event"] == text
            assert change["originatorId"] == consumer
            assert change["originatorMetadata"]["role"] == "CONSUMER"
            assert change["originatorMetadata"]["clientProperties"]["features"]
            assert change["metadata"] == [{"type": "ExternalId", "id": "x-1"}]
        typing = {"type": "ChatStateEvent", "chatState": "COMPOSING"}
        chat = await client.request("ms.PublishEvent", {"dialogId": conv, "event": typing})
        assert chat["body"] == {"sequence": 0}
        await other.wait_for(lambda f: len(other.messaging_changes()) == 2)
        assert sim.stored_events(conv) == [client.messaging_changes()[0]]
        for event in (
            {"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [sequence]},
            {"type": "RichContentEvent", "content": {"type": "vertical", "elements": []}},
            {"type": "ContentEvent", "contentType": "hosted/file", "message": {
                "caption": "c", "relativePath": "/v1/x.PNG", "fileType": "PNG"}},
        ):
            stored = await client.request("ms.PublishEvent", {"dialogId": conv, "event": event})
            assert stored["body"]["sequence"] == sim.stored_events(conv)[-1]["sequence"]
        bad = [{"type": "ContentEvent", "contentType": "hosted/file", "message": {}},
               {"type": "AcceptStatusEvent", "status": "LOVED", "sequenceList": [0]},
               {"type": "MysteryEvent"}]
        for event in bad:
            answer = await client.request("ms.PublishEvent", {"dialogId": conv, "event": event})
            assert answer["code"] == 400
        foreign = await stranger.request("ms.PublishEvent", {"dialogId": conv, "event": text})
        assert foreign["code"] == 400
        sub = await stranger.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
        assert sub["code"] == 400
    finally:
        await other.close()
        await stranger.close()


async def test_update_conversation_fields(
    sim: Simulator, client: PlainClient, consumer: str
) -> None:
    async def update(conv: str, field: object) -> dict[str, object]:
        body = {"conversationId": conv, "conversationField": field}
        return await client.request("cm.UpdateConversationField", body)

    conv = (await client.request("cm.ConsumerRequestConversation"))["body"]["conversationId"]
    ttr = await update(conv, {"field": "TTRField", "ttrType": "URGENT", "value": 300})
    assert ttr["code"] == 200 and ttr["type"] == "StringResponse"
    assert sim.conversation(conv)["ttr"] == {"ttrType": "URGENT", "value": 300}
    assert (await update(conv, {"field": "TTRField", "ttrType": "SOON", "value": 1}))["code"] == 400
    assert (await update(conv, [{"field": "Skill", "type": "UPDATE"}]))["code"] == 400
    closed = await update(conv, [{"field": "ConversationStateField", "conversationState": "CLOSE"}])
    assert closed["code"] == 200
    details = sim.conversation(conv)
    assert (details["state"], details["stage"], details["closeReason"]) == ("CLOSE", "OPEN",
                                                                            "CONSUMER")
    survey = details["dialogs"][1]
    assert survey["dialogType"] == "POST_SURVEY" and survey["state"] == "OPEN"
    dialog_close = {"field": "DialogChange", "type": "UPDATE", "dialog": {
        "dialogId": survey["dialogId"], "state": "CLOSE", "closedCause": "Closed by consumer"}}
    assert (await update(conv, dialog_close))["code"] == 200
    details = sim.conversation(conv)
    assert details["stage"] == "CLOSE" and details["dialogs"][1]["closedBy"] == "CONSUMER"
    csat = {"field": "CSATRate", "csatRate": 5, "csatResolutionConfirmation": True,
            "status": "FILLED"}
    assert (await update(conv, [csat]))["code"] == 200
    assert sim.conversation(conv)["csat"] == csat
    assert (await update(conv, {**csat, "csatRate": 9}))["code"] == 400

    second = (await client.request("cm.ConsumerRequestConversation"))["body"]["conversationId"]
    main_close = {"field": "DialogChange", "type": "UPDATE", "dialog": {
        "dialogId": second, "state": "CLOSE", "closedCause": "Closed by consumer"}}
    assert (await update(second, main_close))["code"] == 200
    assert sim.conversation(second)["dialogs"][0]["closedCause"] == "Closed by consumer"
    assert (await update(second, {"field": "Stage", "conversationState": "CLOSE"}))["code"] == 200
    details = sim.conversation(second)
    assert details["stage"] == "CLOSE" and all(d["state"] == "CLOSE" for d in details["dialogs"])
    assert (await update(second, {"field": "Stage", "conversationState": "CLOSE"}))["code"] == 400
    assert (await update("not-mine", {"field": "Stage", "conversationState": "CLOSE"}))[
        "code"] == 400


async def test_post_survey_dialog_only_for_multi_dialog_clients(
    sim: Simulator, consumer: str
) -> None:
    multi = await PlainClient.connect(sim, sim.issue_token(consumer))
    single = await PlainClient.connect(sim, sim.issue_token(consumer), features=("RICH_CONTENT",))
    try:
        conv = sim.create_conversation(consumer)
        sim.assign_agent(conv)
        for c in (multi, single):
            await c.request("cqm.SubscribeExConversations", {})
        survey = sim.close_conversation(conv, by="CONSUMER")
        assert survey is not None and survey != conv
        sim.survey_question(survey)
        for c in (multi, single):
            await c.wait_for(lambda f, c=c: len(c.ex_changes()) == 2)
        seen = {id(c): c.ex_changes()[-1]["result"]["conversationDetails"]["dialogs"]
                for c in (multi, single)}
        assert [d["dialogType"] for d in seen[id(multi)]] == ["MAIN", "POST_SURVEY"]
        assert [d["dialogType"] for d in seen[id(single)]] == ["MAIN"]
        body = {"dialogId": survey, "conversationId": conv, "fromSeq": 0}
        assert (await single.request("ms.SubscribeMessagingEvents", body))["code"] == 400
        assert (await multi.request("ms.SubscribeMessagingEvents", body))["code"] == 200
        replay = await multi.wait_for(lambda f: f.get("kind") == "notification"
                                      and f["type"] == "ms.MessagingEventNotification")
        question = replay["body"]["changes"][-1]
        assert question["originatorMetadata"]["role"] == "AGENT"
        assert question["event"]["quickReplies"]["replies"]
        assert question["metadata"][0]["type"] == "Question"
        sim.survey_answer(survey, 1)
        sim.complete_survey(conv)
        done = sim.conversation(conv)
        assert done["stage"] == "CLOSE" and done["dialogs"][1]["closedCause"] == "Completed"
        assert done["dialogs"][1]["closedBy"] == "AGENT"
        assert {p["role"] for p in done["participants"]} >= {"AGENT", "CONTROLLER", "READER"}
    finally:
        await multi.close()
        await single.close()


async def test_transfers_and_legacy_csat(sim: Simulator, consumer: str) -> None:
    conv = sim.create_conversation(consumer)
    first = sim.assign_agent(conv)
    sim.transfer_to_skill(conv, "1284356722")
    details = sim.conversation(conv)
    assert details["skillId"] == "1284356722"
    assert {(p["id"], p["role"]) for p in details["participants"]} == {
        (consumer, "CONSUMER"), (first, "READER")}
    second = sim.transfer_to_agent(conv)
    states = {p["id"]: p["state"] for p in sim.conversation(conv)["dialogs"][0][
        "participantsDetails"]}
    assert states[second] == "SUGGESTED"
    sim.agent_message(conv, "I'm here")  # the suggested agent accepts by answering
    states = {p["id"]: p["state"] for p in sim.conversation(conv)["dialogs"][0][
        "participantsDetails"]}
    assert states[second] == "ACTIVE"
    assert sim.stored_events(conv)[-1]["originatorId"] == second
    assert sim.close_conversation(conv, by="AGENT", survey=False) is None
    sim.set_csat(conv, 2, resolved=False, status="PARTIALLY_FILLED")
    details = sim.conversation(conv)
    assert (details["state"], details["stage"], details["closeReason"]) == ("CLOSE", "CLOSE",
                                                                            "AGENT")
    assert details["csat"]["csatRate"] == 2 and details["endTs"] >= details["startTs"]


async def test_auto_reply_reads_types_and_answers(sim: Simulator, client: PlainClient) -> None:
    sim.auto_reply = True
    conv = (await client.request("cm.ConsumerRequestConversation"))["body"]["conversationId"]
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
    text = {"type": "ContentEvent", "contentType": "text/plain", "message": "hello?"}
    sequence = (await client.request("ms.PublishEvent",
                                     {"dialogId": conv, "event": text}))["body"]["sequence"]
    await client.wait_for(lambda f: len(client.messaging_changes()) == 5)
    kinds = [(c["originatorMetadata"]["role"], c["event"]["type"])
             for c in client.messaging_changes()]
    assert kinds == [("CONSUMER", "ContentEvent"), ("ASSIGNED_AGENT", "AcceptStatusEvent"),
                     ("ASSIGNED_AGENT", "ChatStateEvent"), ("ASSIGNED_AGENT", "ContentEvent"),
                     ("ASSIGNED_AGENT", "ChatStateEvent")]
    assert client.messaging_changes()[1]["event"]["sequenceList"] == [sequence]


async def test_file_urls_and_temp_url_storage(sim: Simulator, client: PlainClient) -> None:
    upload = await client.request("ms.GenerateURLForUploadFile",
                                  {"fileSize": "48213", "fileType": "PNG"})
    assert upload["type"] == "ms.GenerateURLResponse"
    path = upload["body"]["relativePath"]
    params = upload["body"]["queryParams"]
    assert path.startswith(f"/v1/AUTH_async-images/{ACCOUNT}/") and path.endswith(".PNG")
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{sim.http_url}{path}", params=params, data=b"png") as reply:
            assert reply.status == 201
        download = await client.request("ms.GenerateURLForDownloadFile", {"relativePath": path})
        params = download["body"]["queryParams"]
        async with http.get(f"{sim.http_url}{path}", params=params) as reply:
            assert await reply.read() == b"png"
        async with http.get(f"{sim.http_url}{path}", params={"temp_url_sig": "x",
                                                             "temp_url_expires": "1"}) as reply:
            assert reply.status == 401
    bad = await client.request("ms.GenerateURLForUploadFile", {"fileType": "EXE"})
    assert bad["code"] == 400


async def test_close_and_drop_connections(sim: Simulator) -> None:
    clients = [await PlainClient.connect(sim, sim.issue_token()) for _ in range(3)]
    await clients[0].request("GetClock")
    assert sim.connection_count() == 3
    await sim.close_connections(code=4401, reason="token expired")
    assert [await c.wait_closed() for c in clients] == [4401] * 3
    again = [await PlainClient.connect(sim, sim.issue_token()) for _ in range(2)]
    await again[0].request("GetClock")
    sim.drop_connections()
    codes = [await c.wait_closed() for c in again]
    assert all(code not in (1000, 4401) for code in codes)
    assert [r.code for r in sim.closes] == [4401, 4401, 4401, None, None]
    for c in clients + again:
        await c.close()
    await asyncio.sleep(0.05)
    assert sim.connection_count() == 0


async def test_subscriptions_belong_to_the_socket(sim: Simulator, consumer: str) -> None:
    conv = sim.create_conversation(consumer)
    first = await PlainClient.connect(sim, sim.issue_token(consumer))
    await first.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
    await first.close()
    second = await PlainClient.connect(sim, sim.issue_token(consumer))
    try:
        await second.request("GetClock")
        sim.consumer_message(conv, "anyone?")
        await second.settle()
        assert second.notifications() == []
    finally:
        await second.close()
