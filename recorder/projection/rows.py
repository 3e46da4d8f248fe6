"""From log events to projection rows: pure Python, no database (recorder.projection writes).

Payloads are normalised with recorder.ums.frames, the same code the receiver uses, so every
shape variant the protocol allows (participants as a role map, bare objects where arrays
belong, rich content as JSON text, `HostedFile` spellings) projects alike.

What one batch learns is collected per key: `ConversationFacts` per conversation, one message
per (dialog_id, sequence), one receipt per (dialog_id, sequence, participant_id, status).
Every merge is order-independent (maxima, minima, sets), so batch boundaries and the order
of events within the log do not change the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import orjson

from recorder.projection import history_rows
from recorder.ums import payload

# Beyond 9999-12-31 timestamptz overflows; such a value is garbage, projected as absent.
MAX_MS = 253_402_300_799_999
INT32 = 2**31 - 1
INT64 = 2**63 - 1
RICH_CONTENT = "rich-content"  # content_type of structured content, as LivePerson's history API
ASSIGNED_AGENT = "ASSIGNED_AGENT"


class LogEvent(Protocol):
    """What the fold reads of a log row: EventRecord (recorder.eventlog.records) and LogRow fit."""

    @property
    def position(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def consumer_id(self) -> str: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def dialog_id(self) -> str | None: ...
    @property
    def payload(self) -> str: ...


class LogRow(NamedTuple):
    """A lean row of projection_sql.READ_RANGE."""

    position: int
    kind: str
    account_id: str
    consumer_id: str
    conversation_id: str | None
    dialog_id: str | None
    payload: str


def epoch_ms(value: Any) -> int | None:
    """A usable epoch-ms timestamp; 0, -1 (\"none\") and out-of-range values are absent."""
    number = _int(value, MAX_MS)
    return number if number is not None and number > 0 else None


def _int(value: Any, limit: int = INT64) -> int | None:
    if type(value) is not int:  # the common case first: this runs for every event
        if value is None:  # the next most common: absent
            return None
        value = payload.change_sequence({"sequence": value})  # integral float or digit string
    return value if value is not None and -limit <= value <= limit else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _originator(change: dict[str, Any]) -> tuple[str | None, str | None]:
    """payload.originator_id and payload.originator_role, with the usual shape read inline."""
    meta = change.get("originatorMetadata")
    if not isinstance(meta, dict):
        return payload.originator_id(change), None
    author = meta.get("id")
    if not isinstance(author, str) or not author:
        author = payload.originator_id(change)
    role = meta.get("role")
    return author, role if isinstance(role, str) and role else None


_CONTENT_TYPES: dict[str, str | None] = {}  # payload.content_type of the spellings seen


def _content_type(body: dict[str, Any]) -> str | None:
    """payload.content_type, remembered per spelling."""
    value = body.get("contentType")
    if type(value) is not str:
        return payload.content_type(body)
    found = _CONTENT_TYPES.get(value)
    if found is None:
        found = payload.content_type(body)
        if len(_CONTENT_TYPES) < 1024:  # a few spellings in practice; bounded whatever comes
            _CONTENT_TYPES[value] = found
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Upsert:
    version: int | None  # metaDataLastUpdateTs (or the older lastUpdateTime)
    position: int
    result: dict[str, Any]
    details: dict[str, Any]
    people: tuple[payload.Participant, ...]  # conversation participants, read once

    @property
    def key(self) -> tuple[int, int]:
        """LWW order: newer version wins; on a tie the earlier log position (stored first)."""
        return (-1 if self.version is None else self.version, -self.position)


@dataclasses.dataclass(slots=True)
class ConversationFacts:
    """What a batch says about one conversation."""

    conversation_id: str
    first_position: int
    last_position: int
    account_id: str
    consumer_id: str
    has_change: bool = False  # any conversation change (UPSERT/DELETE) in the batch
    upsert: Upsert | None = None
    delete_ts: int | None = None
    sticky_delete: bool = False  # a DELETE without a timestamp
    observations: dict[int, list[Any]] = dataclasses.field(default_factory=dict)

    def touch(self, position: int, account_id: str, consumer_id: str) -> None:
        if position < self.first_position:
            self.first_position = position
            self.account_id, self.consumer_id = account_id, consumer_id
        elif position > self.last_position:
            self.last_position = position

    def add_upsert(self, upsert: Upsert) -> None:
        self.has_change = True
        if self.upsert is None or upsert.key > self.upsert.key:
            self.upsert = upsert
        if upsert.version is not None:  # without a time it cannot be placed among transfers
            self.observations[upsert.position] = observation(upsert)

    def add_delete(self, version: int | None) -> None:
        self.has_change = True
        if version is None:
            self.sticky_delete = True
        elif self.delete_ts is None or version > self.delete_ts:
            self.delete_ts = version


def observation(upsert: Upsert) -> list[Any]:
    """[ts, position, skill, sorted assigned agents]: what transfers are derived from."""
    agents = sorted({p.id for p in upsert.people if p.role == ASSIGNED_AGENT})
    return [upsert.version, upsert.position, _text(upsert.details.get("skillId")), agents]


def derive_transfers(assignments: list[list[Any]]) -> list[dict[str, Any]]:
    """Skill and agent changes between consecutive UPSERTs in (ts, position) order.

    A missing skill carries the last known one forward (older payloads have none), so it does
    not read as two transfers.
    """
    transfers: list[dict[str, Any]] = []
    skill: str | None = None
    agents: list[str] | None = None
    for ts, _position, new_skill, new_agents in sorted(assignments, key=lambda a: (a[0], a[1])):
        if new_skill is not None:
            if skill is not None and new_skill != skill:
                transfers.append({"ts": ts, "kind": "skill", "from": skill, "to": new_skill})
            skill = new_skill
        if agents is not None and new_agents != agents:
            transfers.append({"ts": ts, "kind": "agent", "from": agents, "to": new_agents})
        agents = new_agents
    return transfers


def state_columns(upsert: Upsert) -> tuple[Any, ...]:
    """brand_id … details, in projection_sql.STATE_COLUMNS order (times as epoch ms)."""
    details = upsert.details
    csat = details.get("csat")
    csat = csat if isinstance(csat, dict) else {}
    ttr = details.get("ttr")
    ttr = ttr if isinstance(ttr, dict) else {}
    confirmation = csat.get("csatResolutionConfirmation")
    return (
        _text(details.get("brandId")),
        _text(details.get("skillId")),
        _text(details.get("state")),
        _text(details.get("stage")),
        _text(details.get("closeReason")),
        epoch_ms(details.get("startTs")),
        epoch_ms(details.get("endTs")),
        upsert.version,
        upsert.position,
        _int(csat.get("csatRate"), INT32),
        confirmation if isinstance(confirmation, bool) else None,
        _text(csat.get("status")),
        _text(ttr.get("ttrType")),
        _int(ttr.get("value")),
        epoch_ms(upsert.result.get("effectiveTTR")),
        _json(details),
    )


def membership_rows(
    conversation_id: str, upsert: Upsert
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The participants and dialogs rows of a winning UPSERT, from one walk of its dialogs.

    Participants: (conversation, participant, role, state); the state comes from the dialogs'
    participantsDetails (ACTIVE / SUGGESTED), where one lists the same id and role.
    Dialogs: one row per dialog id, the last listing winning.
    """
    states: dict[tuple[str, str], str] = {}
    dialogs: dict[str, tuple[Any, ...]] = {}
    for dialog in payload.dialogs(upsert.details):
        for person in dialog.participants_details:
            if person.state is not None:
                states.setdefault((person.id, person.role), person.state)
        data = dialog.data
        people = [{"id": p.id, "role": p.role, "state": p.state}
                  for p in dialog.participants_details]
        version = dialog.meta_data_last_update_ts
        dialogs[dialog.dialog_id] = (
            dialog.dialog_id, conversation_id, dialog.dialog_type, dialog.channel_type,
            dialog.state, epoch_ms(data.get("creationTs")), epoch_ms(data.get("endTs")),
            _text(data.get("closedBy")), _text(data.get("closedCause")),
            version if version is not None and abs(version) <= INT64 else None,
            _json(people),
        )
    participants: dict[tuple[str, str], tuple[Any, ...]] = {}
    for person in upsert.people:
        key = (person.id, person.role)
        participants.setdefault(key, (conversation_id, person.id, person.role, states.get(key)))
    return list(participants.values()), list(dialogs.values())


class Batch:
    """Accumulates the projection rows of a run of events."""

    def __init__(self) -> None:
        self.events = 0
        self.unreadable: list[int] = []  # positions whose payload is not a JSON object to us
        self.conversations: dict[str, ConversationFacts] = {}
        self.messages: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.receipts: dict[tuple[str, int, str, str], tuple[Any, ...]] = {}
        self.agents: dict[str, tuple[Any, ...]] = {}
        self.reconciliations: dict[str, tuple[Any, ...]] = {}

    def add(self, event: LogEvent) -> None:
        self.add_row(event.position, event.kind, event.account_id, event.consumer_id,
                     event.conversation_id, event.dialog_id, event.payload)

    def add_row(self, position: int, kind: str, account_id: str, consumer_id: str,
                conversation_id: str | None, dialog_id: str | None, payload: str) -> None:
        """add() for the columns of a LogRow, spread out: the rebuild's hot loop."""
        self.events += 1
        if kind != "messaging" and kind != "conversation":
            if kind == "agent" or kind == "reconciliation":
                self._history_row(position, kind, conversation_id, payload)
            return
        try:
            change = orjson.loads(payload)
        except orjson.JSONDecodeError:  # e.g. 1e400, which jsonb holds: skip it, do not wedge
            change = None
        if not isinstance(change, dict):
            self.unreadable.append(position)
        elif kind == "messaging":
            self._messaging_change(position, account_id, consumer_id, conversation_id,
                                   dialog_id, change)
        else:
            self._conversation_change(position, account_id, consumer_id, conversation_id, change)

    def _history_row(self, position: int, kind: str, conversation_id: str | None,
                     payload: str) -> None:
        try:
            change = orjson.loads(payload)
        except orjson.JSONDecodeError:
            change = None
        row = None
        if isinstance(change, dict):
            if kind == "agent":
                row = history_rows.agent_row(change, position)
                table = self.agents
            else:
                row = history_rows.reconciliation_row(change, conversation_id, position)
                table = self.reconciliations
            if row is not None:
                seen = table.get(row[0])
                if seen is None or seen[-1] < position:  # the newest event wins
                    table[row[0]] = row
        if row is None:
            self.unreadable.append(position)

    def _touch(self, conversation_id: str, position: int, account_id: str, consumer_id: str,
               ) -> ConversationFacts:
        facts = self.conversations.get(conversation_id)
        if facts is None:
            facts = ConversationFacts(conversation_id, position, position, account_id, consumer_id)
            self.conversations[conversation_id] = facts
        else:
            facts.touch(position, account_id, consumer_id)
        return facts

    def _conversation_change(self, position: int, account_id: str, consumer_id: str,
                             conversation_id: str | None, change: dict[str, Any]) -> None:
        kind, found_id, updated_ms, result, details = payload.read_conversation_change(change)
        conversation_id = found_id or conversation_id
        if not conversation_id or result is None or kind not in ("UPSERT", "DELETE"):
            return  # nothing to key or apply; the event stays in the log
        version = epoch_ms(updated_ms)
        facts = self._touch(conversation_id, position, account_id, consumer_id)
        if kind == "DELETE":
            facts.add_delete(version)
            return
        details = details if isinstance(details, dict) else {}
        people = tuple(payload.participants(details))
        facts.add_upsert(Upsert(version, position, result, details, people))

    def _messaging_change(self, position: int, account_id: str, consumer_id: str,
                          conversation_id: str | None, dialog_id: str | None,
                          change: dict[str, Any]) -> None:
        # The common shapes are read inline (the rebuild's hot loop); anything else goes
        # through recorder.ums.payload's accessors, which the inline reads equal.
        sequence = change.get("sequence")
        if type(sequence) is not int or not -INT64 <= sequence <= INT64:
            sequence = _int(sequence)
        dialog_id = dialog_id or payload.change_dialog_id(change)
        if not dialog_id:
            return
        conversation_id = conversation_id or _text(change.get("conversationId"))
        server_ms = change.get("serverTimestamp")
        if (type(server_ms) is not int or not 0 < server_ms <= MAX_MS
                or isinstance(change.get("result"), dict)):
            server_ms = epoch_ms(payload.server_timestamp_ms(change))
        body = change.get("event")
        if isinstance(body, dict):
            event_type = body.get("type")
            if not isinstance(event_type, str):
                event_type = ""
        else:
            body, event_type = {}, ""
        if event_type == "AcceptStatusEvent":
            # A receipt from the history may carry no sequence of its own (protocol.md 12a):
            # its sequenceList still counts.
            projected = self._receipts(position, change, body, dialog_id, server_ms)
        elif sequence is None:
            return  # typing indicators and the like: not messages
        else:
            projected = self._message(position, change, body, event_type, (dialog_id, sequence),
                                      conversation_id, server_ms)
        if projected and conversation_id:
            self._touch(conversation_id, position, account_id, consumer_id)

    def _message(
        self, position: int, change: dict[str, Any], body: dict[str, Any], event_type: str,
        key: tuple[str, int], conversation_id: str | None, server_ms: int | None,
    ) -> bool:
        seen = self.messages.get(key)
        if seen is not None and seen[-1] <= position:
            return True
        content_type = text = rich = hosted = None
        keep_raw = True  # the raw event is kept only where the columns do not capture it
        if event_type == "ContentEvent":
            content_type = _content_type(body)
            message = body.get("message")
            if isinstance(message, str):
                text, keep_raw = message, False
            elif content_type == payload.HOSTED_FILE and isinstance(message, dict):
                hosted, keep_raw = _json(message), False
            keep_raw = keep_raw or "quickReplies" in body
        elif event_type.rpartition(".")[2].startswith("RichContent"):
            content = payload.rich_content(body)
            content_type = _content_type(body) or RICH_CONTENT
            if content is not None:
                rich, keep_raw = _json(content), False
        metadata = change.get("metadata")
        audience = change.get("messageAudience")
        author, role = _originator(change)
        self.messages[key] = (
            *key, conversation_id, author, role,
            event_type or None, content_type, text, rich, hosted,
            _json(metadata) if isinstance(metadata, list | dict) else None,
            audience if isinstance(audience, str) else None,
            _json(body) if keep_raw else None,
            server_ms, position,
        )
        return True

    def _receipts(self, position: int, change: dict[str, Any], body: dict[str, Any],
                  dialog_id: str, server_ms: int | None) -> bool:
        participant = _originator(change)[0]
        status = _text(body.get("status"))
        if participant is None or status is None:
            return False
        projected = False
        for item in payload.as_list(body.get("sequenceList")):
            sequence = _int(item)
            if sequence is None:
                continue
            key = (dialog_id, sequence, participant, status)
            seen = self.receipts.get(key)
            if seen is None or position < seen[-1]:
                self.receipts[key] = (*key, server_ms, position)
            projected = True
        return projected
