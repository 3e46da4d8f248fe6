"""What the simulator sent, received, closed and answered over REST, for tests to compare with
what a client stored.

`SentFrame` flags tell a test which frames were faults: a duplicate is a second copy of the
frame before it, a variant is an alternative shape of the same content, a malformed frame
carries no content at all, and an unknown frame holds an event type no client knows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from recorder.simulator.model import Json

#: Event types a client is expected to know; anything else in a frame is flagged `unknown`.
KNOWN_EVENT_TYPES = frozenset(
    {"ContentEvent", "RichContentEvent", "AcceptStatusEvent", "ChatStateEvent"}
)


@dataclasses.dataclass(frozen=True)
class SentFrame:
    connection_id: int
    consumer: str | None
    time: float
    text: str
    #: The parsed frame exactly as sent (None when the text is not JSON).
    frame: Any
    duplicate: bool = False
    variant: bool = False
    malformed: bool = False
    unknown: bool = False
    reordered: bool = False
    variants: tuple[str, ...] = ()

    @property
    def kind(self) -> str | None:
        return self.frame.get("kind") if isinstance(self.frame, dict) else None

    @property
    def type(self) -> str | None:
        return self.frame.get("type") if isinstance(self.frame, dict) else None


@dataclasses.dataclass(frozen=True)
class ReceivedFrame:
    connection_id: int
    consumer: str | None
    time: float
    text: str
    frame: Any


@dataclasses.dataclass(frozen=True)
class CloseRecord:
    """How a connection ended on the server's initiative; `code` is None for an abrupt drop."""

    connection_id: int
    consumer: str | None
    time: float
    code: int | None
    reason: str


class RestRequest(NamedTuple):
    """One REST request to a profile or the history, and the status it was answered with."""

    #: "profile", "history_content" or "history_metadata".
    endpoint: str
    #: The agent id, the conversation or dialog id, or the consumer (None when not known).
    key: str | None
    status: int
    #: time.monotonic() when it was answered: how far apart a client's retries came
    at: float = 0.0


def changes_of(frame: Any) -> list[Json]:
    """The change objects of a notification, whatever shape variant carried them."""
    if not isinstance(frame, dict) or frame.get("kind") != "notification":
        return []
    body = frame.get("body")
    if not isinstance(body, dict):
        return []
    if "changes" not in body:
        # ms.OnlineEventDistribution: the body is the single change itself.
        return [body] if "event" in body else []
    changes = body["changes"]
    if isinstance(changes, dict):
        return [changes]
    return [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []


def has_unknown_event(frame: Any) -> bool:
    for change in changes_of(frame):
        event = change.get("event")
        if isinstance(event, dict) and event.get("type") not in KNOWN_EVENT_TYPES:
            return True
    return False


def frames_of_type(journal: Iterable[SentFrame], *types: str) -> Iterator[SentFrame]:
    wanted = set(types)
    return (sent for sent in journal if sent.type in wanted)


def delivered_events(journal: Iterable[SentFrame], dialog_id: str) -> list[Json]:
    """Sequenced messaging changes of one dialog as delivered, deduplicated by sequence."""
    seen: dict[int, Json] = {}
    for sent in journal:
        for change in changes_of(sent.frame):
            sequence = change.get("sequence")
            if change.get("dialogId") == dialog_id and isinstance(sequence, int):
                seen.setdefault(sequence, change)
    return [seen[key] for key in sorted(seen)]
