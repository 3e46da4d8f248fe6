"""The simulator's truth: conversations, dialogs, participants and the stored events per dialog.

Plain data plus rendering to the wire shapes of protocol.md §5.1 (`conversationDetails`) and
§5.2 (messaging changes). Mutations live in `world.py`; nothing here talks to sockets.
"""

from __future__ import annotations

import dataclasses
import random
import string
import time
import uuid
from typing import Any

from recorder.errors import RecorderError

Json = dict[str, Any]

CONSUMER = "CONSUMER"
ASSIGNED_AGENT = "ASSIGNED_AGENT"
READER = "READER"
AGENT = "AGENT"
CONTROLLER = "CONTROLLER"

MAIN = "MAIN"
POST_SURVEY = "POST_SURVEY"
OPEN = "OPEN"
CLOSE = "CLOSE"

#: The event types LivePerson's Messaging History keeps (no typing, no unknown types).
HISTORY_EVENT_TYPES = frozenset({"ContentEvent", "RichContentEvent", "AcceptStatusEvent"})

#: Default TTR seconds per `ttrDefName`, used when a conversation is requested.
TTR_DEFAULTS = {"NORMAL": 3600, "PRIORITIZED": 600, "URGENT": 300}
TTR_TYPES = ("CUSTOM", "NORMAL", "PRIORITIZED", "URGENT")

_BASE62 = string.ascii_letters + string.digits


class SimulatorError(RecorderError):
    """A simulator action that the model refuses (unknown id, closed dialog, ...)."""


class Clock:
    """Epoch milliseconds that never go backwards.

    With `start_ms` the clock is virtual: every reading advances it by one millisecond, so a
    seeded run is reproducible to the millisecond (GetClock only peeks and does not advance it).
    """

    def __init__(self, start_ms: int | None = None) -> None:
        self.virtual = start_ms is not None
        self._last = start_ms if start_ms is not None else 0

    def now_ms(self) -> int:
        if self.virtual:
            self._last += 1
        else:
            self._last = max(int(time.time() * 1000), self._last)
        return self._last

    def peek_ms(self) -> int:
        return self._last if self.virtual else max(int(time.time() * 1000), self._last)

    def advance(self, ms: int) -> None:
        """Move a virtual clock forward (time passing between test steps); a real clock
        cannot be moved."""
        if not self.virtual:
            raise ValueError("only a virtual clock (clock_start_ms) can be advanced")
        if ms < 0:
            raise ValueError("a clock only moves forward")
        self._last += ms


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from a seeded generator (never from the global one)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def new_dialog_id(rng: random.Random) -> str:
    """22 base62 characters: the shape of the POST_SURVEY dialog ids in LivePerson's examples."""
    return "".join(rng.choice(_BASE62) for _ in range(22))


@dataclasses.dataclass
class Participant:
    id: str
    role: str
    state: str = "ACTIVE"


@dataclasses.dataclass
class Dialog:
    dialog_id: str
    conversation_id: str
    dialog_type: str
    creation_ts: int
    meta_ts: int
    participants: list[Participant]
    state: str = OPEN
    channel_type: str = "MESSAGING"
    end_ts: int | None = None
    closed_by: str | None = None
    closed_cause: str | None = None
    meta_data: Json | None = None
    #: Stored changes in sequence order: what a correct client must end up with.
    events: list[Json] = dataclasses.field(default_factory=list)
    next_sequence: int = 0
    #: Sequences of stored events the socket does not deliver, live or on replay, until they
    #: are released; only the history API shows them (see `withhold.py`).
    withheld: set[int] = dataclasses.field(default_factory=set)
    #: A tail is being withheld: every further sequenced event of the dialog is withheld too.
    withhold_tail: bool = False

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    def events_from(self, from_sequence: int) -> list[Json]:
        return [event for event in self.events if event["sequence"] >= from_sequence]

    def deliverable_from(self, from_sequence: int) -> list[Json]:
        """`events_from` without the withheld events: what a socket subscription replays."""
        events = self.events_from(from_sequence)
        return [e for e in events if e["sequence"] not in self.withheld] if self.withheld \
            else events

    def render(self) -> Json:
        out: Json = {
            "dialogId": self.dialog_id,
            "participantsDetails": [
                {"id": p.id, "role": p.role, "state": p.state} for p in self.participants
            ],
            "dialogType": self.dialog_type,
            "channelType": self.channel_type,
        }
        if self.meta_data is not None:
            out["metaData"] = dict(self.meta_data)
        out["state"] = self.state
        out["creationTs"] = self.creation_ts
        if self.end_ts is not None:
            out["endTs"] = self.end_ts
        out["metaDataLastUpdateTs"] = self.meta_ts
        if self.closed_by is not None:
            out["closedBy"] = self.closed_by
        if self.closed_cause is not None:
            out["closedCause"] = self.closed_cause
        return out


@dataclasses.dataclass
class Conversation:
    conv_id: str
    consumer: str
    brand_id: str
    skill_id: str
    start_ts: int
    meta_ts: int
    participants: list[Participant]
    dialogs: list[Dialog]
    state: str = OPEN
    stage: str = OPEN
    close_reason: str | None = None
    end_ts: int | None = None
    ttr_type: str = "NORMAL"
    ttr_value: int = 3600
    csat: Json | None = None
    effective_ttr: int = -1
    #: `conversationHandlerDetails` appears once an agent or a skill transfer handled it.
    handled: bool = False

    @property
    def main(self) -> Dialog:
        return self.dialogs[0]

    @property
    def survey(self) -> Dialog | None:
        surveys = [d for d in self.dialogs if d.dialog_type == POST_SURVEY]
        return surveys[-1] if surveys else None

    @property
    def assigned_agent(self) -> Participant | None:
        return next((p for p in self.main.participants if p.role == ASSIGNED_AGENT), None)

    def touch(self, now_ms: int) -> int:
        """Advance `metaDataLastUpdateTs`: strictly increasing per conversation."""
        self.meta_ts = max(now_ms, self.meta_ts + 1)
        return self.meta_ts

    def has_participant(self, participant_id: str, role: str) -> bool:
        return any(p.id == participant_id and p.role == role for p in self.participants)

    def add_participant(self, participant_id: str, role: str) -> None:
        if not self.has_participant(participant_id, role):
            self.participants.append(Participant(participant_id, role))

    def visible_dialogs(self, multi_dialog: bool) -> list[Dialog]:
        """POST_SURVEY (and other non-MAIN) dialogs exist only for MULTI_DIALOG clients."""
        return [d for d in self.dialogs if multi_dialog or d.dialog_type == MAIN]

    def details(self, multi_dialog: bool = True) -> Json:
        out: Json = {
            "skillId": self.skill_id,
            "participants": [{"id": p.id, "role": p.role} for p in self.participants],
            "dialogs": [d.render() for d in self.visible_dialogs(multi_dialog)],
            "brandId": self.brand_id,
            "state": self.state,
            "stage": self.stage,
        }
        if self.close_reason is not None:
            out["closeReason"] = self.close_reason
        out["startTs"] = self.start_ts
        if self.end_ts is not None:
            out["endTs"] = self.end_ts
        out["metaDataLastUpdateTs"] = self.meta_ts
        out["ttr"] = {"ttrType": self.ttr_type, "value": self.ttr_value}
        if self.csat is not None:
            out["csat"] = dict(self.csat)
        if self.handled:
            out["conversationHandlerDetails"] = {
                "accountId": self.brand_id,
                "skillId": self.skill_id,
            }
        return out

    def result(self, multi_dialog: bool = True) -> Json:
        """The `result` of an ExConversationChange UPSERT or DELETE."""
        return {
            "convId": self.conv_id,
            "effectiveTTR": self.effective_ttr,
            "conversationDetails": self.details(multi_dialog),
        }

    def matches(self, conv_states: frozenset[str], stages: frozenset[str], min_ts: int) -> bool:
        """The `cqm.SubscribeExConversations` filter (state is the MAIN dialog state)."""
        return self.state in conv_states and self.stage in stages and self.meta_ts >= min_ts


def messaging_change(
    dialog: Dialog,
    originator: str,
    role: str,
    event: Json,
    *,
    sequence: int | None,
    timestamp: int | None,
    metadata: list[Json] | None = None,
    client_properties: Json | None = None,
    with_metadata_key: bool = False,
) -> Json:
    """One element of `ms.MessagingEventNotification.body.changes` (§5.2), keys in doc order.

    ChatStateEvent changes pass `sequence=None, timestamp=None`: live examples carry neither.
    """
    change: Json = {}
    if sequence is not None:
        change["sequence"] = sequence
    change["originatorId"] = originator
    origin: Json = {"id": originator, "role": role}
    if client_properties is not None:
        origin["clientProperties"] = dict(client_properties)
    change["originatorMetadata"] = origin
    if client_properties is not None:
        change["originatorClientProperties"] = dict(client_properties)
    if timestamp is not None:
        change["serverTimestamp"] = timestamp
    change["event"] = event
    change["conversationId"] = dialog.conversation_id
    change["dialogId"] = dialog.dialog_id
    if metadata is not None or with_metadata_key:
        change["metadata"] = metadata
    return change
