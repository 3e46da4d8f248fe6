"""Fault switches and the frame transformations they cause.

`Faults` is read for every frame and request, so changing a field at runtime
(`sim.faults.duplicate_probability = 0.5`) affects the frames that follow. Transformations
work on copies: the model's stored events are never touched.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any

import orjson

from recorder.simulator import wire
from recorder.simulator.model import Json

VARIANT_KINDS = (
    "bare_change",  # a single change object instead of a one-element `changes` array (§2.4)
    "participants_map",  # `participants` as role -> [ids] map plus `participantsPId` (§5.1)
    "participants_pid_only",  # older consumer tutorial: only `participantsPId`, `lastUpdateTime`
    "originator_pid",  # originator only as `originatorPId` (§5.2)
    "notification_alias",  # aam./.ams.aam. ExConversation types; ms.OnlineEventDistribution
    "response_alias",  # response type aliases of §3.4
    "rich_content_string",  # RichContentEvent `content` as a JSON string (§5.2)
    "unknown_fields",  # undocumented fields a client must ignore and keep (§2.4)
)

RESPONSE_ALIASES: dict[str, tuple[str, ...]] = {
    wire.GENERIC_SUBSCRIBE_RESP: (".ams.GenericSubscribeResponse",),
    wire.STRING_RESP: (wire.STRING_RESPONSE,),
    wire.STRING_RESPONSE: (wire.STRING_RESP,),
    wire.REQUEST_CONVERSATION_RESP: (".ams.cm.RequestConversation$Response",),
    wire.SUBSCRIBE_EX_RESP: (".ams.aam.SubscribeExConversations$Response",),
    wire.PUBLISH_RESP: (".ams.ms.PublishEvent$Response",),
    wire.GENERATE_URL_RESP: ("ms.BaseGenerateURLResponse",),
}
EX_CONVERSATION_ALIASES = ("aam.ExConversationChangeNotification",
                           ".ams.aam.ExConversationChangeNotification")
ONLINE_EVENT_ALIASES = ("ms.OnlineEventDistribution", ".ams.ms.OnlineEventDistribution")

MALFORMED_FRAMES = (
    '{"kind":"notification","type":"ms.MessagingEventNotification","body":{"chan',  # cut off
    "this is not JSON",
    '["kind", "notification"]',  # JSON, but not an object
    "42",
    '"notification"',
    '{"hello":"world"}',  # an object with no kind and no type
)


@dataclasses.dataclass
class Faults:
    """Every switch defaults to off. Counts are per connection; request counters are global
    (websocket requests and REST requests are counted apart)."""

    #: Abruptly drop the socket (no close frame) once this many frames went out on it.
    drop_after_frames: int | None = None
    #: Per frame: drop the socket abruptly instead of sending the frame.
    drop_probability: float = 0.0
    #: Close with `close_code` (default 1011) once this many frames went out on a connection.
    close_after_frames: int | None = None
    close_code: int | None = None
    close_reason: str = "simulated close"
    #: Every k-th request (all connections, InitConnection excepted) is answered 429 ...
    reject_every: int | None = None
    #: ... and, counted on the same requests, every k-th one 503.
    server_error_every: int | None = None
    #: Per notification: send the very same frame twice.
    duplicate_probability: float = 0.0
    #: Hold a live UPSERT back until the next newer one of that conversation went out.
    reorder_upserts: bool = False
    reorder_hold_s: float = 0.25
    #: Alternative shapes of §2.4/§3.4/§5; `variants` limits the kinds (None = all of them).
    shape_variants: bool = False
    variant_probability: float = 0.5
    variants: frozenset[str] | None = None
    #: Per stored event: also store a `FutureEvent` (an unknown type, with its own sequence).
    unknown_event_probability: float = 0.0
    #: Per frame: send a malformed frame (not JSON, not an object, no kind/type) before it.
    malformed_probability: float = 0.0
    #: Delay every response by this long (the request is handled after the delay).
    response_delay_ms: float = 0.0
    #: Stop answering GetClock (the request is read and ignored).
    no_clock: bool = False
    #: Per stored Content/RichContent/AcceptStatus event: never deliver it on the socket
    #: (live or on replay) until `release_withheld`; only the history API shows it ...
    withhold_probability: float = 0.0
    #: ... or withhold it and every later sequenced event of its dialog (a tail).
    withhold_tail_probability: float = 0.0
    #: Every k-th REST request (profiles and history, counted together) is answered 429 ...
    rest_reject_every: int | None = None
    #: ... and, counted on the same requests, every k-th one 503 (429 wins when both hit).
    rest_server_error_every: int | None = None
    #: Per history content page of >= 2 records: drop some records, keep the true count.
    history_partial_probability: float = 0.0
    #: Agent ids whose public profile answers 404 although they are in the agent pool.
    unknown_agents: set[str] = dataclasses.field(default_factory=set)
    #: Conversations never reported on the socket (no ExConversation UPSERT, so a client never
    #: learns their dialogs); the history's metadata search still lists them.
    hidden_conversations: set[str] = dataclasses.field(default_factory=set)

    def variant_enabled(self, kind: str) -> bool:
        return self.shape_variants and (self.variants is None or kind in self.variants)


def malformed_frame(rng: random.Random) -> str:
    return rng.choice(MALFORMED_FRAMES)


def apply_variants(frame: Json, faults: Faults, rng: random.Random) -> tuple[Json, tuple[str, ...]]:
    """A copy of `frame` in zero or more alternative shapes, with the names of those applied."""
    applied: list[str] = []

    def pick(kind: str) -> bool:
        if faults.variant_enabled(kind) and rng.random() < faults.variant_probability:
            applied.append(kind)
            return True
        return False

    out = copy.deepcopy(frame)
    if out.get("kind") == "resp":
        aliases = RESPONSE_ALIASES.get(out.get("type", ""))
        if aliases and pick("response_alias"):
            out["type"] = rng.choice(aliases)
            if out["type"] == ".ams.GenericSubscribeResponse":
                del out["body"]  # the PCS tutorial shows this response without a body
        return out, tuple(applied)
    if out.get("kind") != "notification":
        return out, ()
    body: Json = out["body"]
    changes: list[Json] = body["changes"]
    if out["type"] == wire.EX_CONVERSATION_NOTIFICATION and changes:
        if pick("participants_map"):
            for change in changes:
                _participants_map(change["result"], keep_array_name=True)
        elif pick("participants_pid_only"):
            for change in changes:
                _participants_map(change["result"], keep_array_name=False)
    if out["type"] == wire.MESSAGING_NOTIFICATION:
        if pick("originator_pid"):
            body["changes"] = changes = [_originator_pid(change) for change in changes]
        rich = [c["event"] for c in changes if c["event"].get("type") == "RichContentEvent"]
        if rich and pick("rich_content_string"):
            for event in rich:
                event["content"] = orjson.dumps(event["content"]).decode()
    if pick("unknown_fields"):
        body["simulatorFutureField"] = {"note": "undocumented; ignore and keep"}
        for change in changes:
            change["futureChangeField"] = 1
    _envelope(out, changes, pick, rng)
    return out, tuple(applied)


def _envelope(out: Json, changes: list[Json], pick: Any, rng: random.Random) -> None:
    if out["type"] == wire.EX_CONVERSATION_NOTIFICATION and pick("notification_alias"):
        out["type"] = rng.choice(EX_CONVERSATION_ALIASES)
    elif (
        out["type"] == wire.MESSAGING_NOTIFICATION
        and len(changes) == 1
        and pick("notification_alias")
    ):
        # The legacy implicit stream: the body *is* the single change.
        out["type"] = rng.choice(ONLINE_EVENT_ALIASES)
        out["body"] = changes[0]
        return
    if len(changes) == 1 and pick("bare_change"):
        out["body"]["changes"] = changes[0]


def _participants_map(result: Json, *, keep_array_name: bool) -> None:
    details = result["conversationDetails"]
    by_role: dict[str, list[str]] = {}
    for participant in details["participants"]:
        by_role.setdefault(participant["role"], []).append(participant["id"])
    if keep_array_name:
        # Agent v2 raw: `participants` (legacy ids) and `participantsPId` (UUIDs) as maps.
        details["participants"] = by_role
        details["participantsPId"] = copy.deepcopy(by_role)
    else:
        del details["participants"]
        details["participantsPId"] = by_role
        result["lastUpdateTime"] = details["metaDataLastUpdateTs"]


def _originator_pid(change: Json) -> Json:
    out: Json = {}
    for key, value in change.items():
        if key == "originatorId":
            out["originatorPId"] = value
        elif key not in ("originatorMetadata", "originatorClientProperties"):
            out[key] = value
    return out
