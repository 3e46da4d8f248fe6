"""Three days of complete conversations for the analyst SQL tests, and the truth about them.

The scenario scripts the simulator in virtual time: each conversation is a generator that
acts on the simulator (a message, a receipt, a transfer, a close, a survey, a CSAT) and then
says how long to wait before its next step; `play` runs all of them interleaved in time order,
moving the simulator's clock to each step's time, so first responses, hours and days are
spread as on a live account. Everything depends only on the seed.

The truth (`Truth.of`) is read from the simulator's own model, never from the database: the
stored events of every dialog (authors, roles, texts, server timestamps, receipts) and each
conversation's final state, plus the ledger of the transfers the scenario made.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import heapq
import random
from collections.abc import Callable, Iterator
from typing import Any

from recorder.simulator import Simulator
from recorder.simulator.model import POST_SURVEY, Clock
from recorder.simulator.script import CONSUMER_LINES, REPLIES

Json = dict[str, Any]

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DAYS = 3
CONVERSATIONS_PER_DAY = 14
CONSUMERS = 8
SKILLS = ("1284356710", "1284356722", "1284356733")
TTRS = (("PRIORITIZED", 600), ("URGENT", 300), ("CUSTOM", 1800))
FAR_TTR_S = 14 * 86_400  # a CUSTOM TTR whose deadline is still ahead when the test runs
BRAND_ROLES = ("ASSIGNED_AGENT", "AGENT", "MANAGER")
CONTENT_EVENTS = ("ContentEvent", "RichContentEvent")
RICH_CONTENT = "rich-content"  # content_type of structured content (recorder/projection/fold.py)
#: The conversations left open at the end, one of each.
OPEN_KINDS = ("open_waiting", "open_waiting_future", "open_answered", "open_transferred")


class ScriptedClock(Clock):
    """The simulator's virtual clock, moved forward to each step's time by the scenario."""

    def move_to(self, ms: int) -> None:
        self._last = max(self._last, ms - 1)  # the next reading is `ms` (or later)


def install_clock(sim: Simulator, start_ms: int) -> ScriptedClock:
    clock = ScriptedClock(start_ms)
    sim.clock = sim.world.clock = clock
    return clock


def first_day_ms(today: dt.date | None = None) -> int:
    """Midnight UTC, DAYS + 1 days before today: the scenario's days, and every deadline it
    sets for the conversations left open (but the CUSTOM one), lie before yesterday ended."""
    today = today or dt.datetime.now(dt.UTC).date()
    first = dt.datetime.combine(today - dt.timedelta(days=DAYS + 1), dt.time(), tzinfo=dt.UTC)
    return int(first.timestamp() * 1000)


@dataclasses.dataclass
class Ledger:
    """What the scenario did that the model does not keep: its transfers."""

    transfers: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    skill_transfers: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # conversation -> kind


@dataclasses.dataclass(frozen=True)
class Planned:
    start_ms: int
    kind: str
    skill: str


def plan(rng: random.Random, start_ms: int) -> list[Planned]:
    plans = []
    for day in range(DAYS):
        for _ in range(CONVERSATIONS_PER_DAY):
            at = start_ms + day * DAY_MS + rng.randrange(6 * HOUR_MS, 20 * HOUR_MS)
            kind = "unanswered" if rng.random() < 0.12 else "answered"
            plans.append(Planned(at, kind, rng.choice(SKILLS)))
    last_evening = start_ms + (DAYS - 1) * DAY_MS + 21 * HOUR_MS
    for n, kind in enumerate(OPEN_KINDS):
        plans.append(Planned(last_evening + n * 10 * MINUTE_MS, kind, rng.choice(SKILLS)))
    return sorted(plans, key=lambda p: p.start_ms)


def _s(rng: random.Random, low: float, high: float) -> int:
    return int(rng.uniform(low, high) * SECOND_MS)


def conversation(
    sim: Simulator, rng: random.Random, ledger: Ledger, consumer: str, planned: Planned
) -> Iterator[int]:
    """One conversation; yields the milliseconds to wait before its next step."""
    kind = planned.kind
    conv = sim.create_conversation(consumer, planned.skill)
    ledger.kinds[conv] = kind
    model = sim.world.conversation(conv)
    if kind == "open_waiting_future":
        sim.set_ttr(conv, "CUSTOM", FAR_TTR_S)
    elif rng.random() < 0.35:
        sim.set_ttr(conv, *rng.choice(TTRS))
    yield _s(rng, 2, 40)
    unread = [sim.consumer_message(conv, rng.choice(CONSUMER_LINES))]
    if kind in ("unanswered", "open_waiting", "open_waiting_future"):
        if rng.random() < 0.5:
            yield _s(rng, 30, 300)
            unread.append(sim.consumer_message(conv, rng.choice(CONSUMER_LINES)))
        if kind == "unanswered":
            # Closed without an answer, by the system or the consumer, now and then with a
            # survey: its bot writes as AGENT, but that answers nobody.
            yield _s(rng, 300, 2400)
            yield from close(sim, rng, conv, by=rng.choice(("SYSTEM", "CONSUMER")))
        return

    # The first response: mostly within minutes, now and then after more than an hour (the
    # one transferred and left open always late, beyond its TTR).
    slow = _s(rng, 3660, 6000)
    yield slow if kind == "open_transferred" else rng.choice((_s(rng, 10, 120),
                                                                _s(rng, 60, 900), slow))
    sim.assign_agent(conv)
    sim.agent_read(conv, unread)
    unread = []
    unaccepted = [sim.agent_message(conv, rng.choice(REPLIES))]
    accepted: list[int] = []  # ACCEPTed by the consumer, not yet READ

    def transfer_to_skill() -> None:
        to = rng.choice([skill for skill in SKILLS if skill != model.skill_id])
        ledger.transfers[conv] += 1
        ledger.skill_transfers.append((conv, model.skill_id, to))
        sim.transfer_to_skill(conv, to)

    actions: dict[str, Callable[[], None]] = {}

    def consumer_text() -> None:
        unread.append(sim.consumer_message(conv, rng.choice(CONSUMER_LINES)))

    def consumer_file() -> None:
        unread.append(sim.consumer_file(conv, "Photo", rng.choice(("PNG", "JPG"))))

    def agent_text() -> None:
        if unread and rng.random() < 0.7:
            agent_read()
        unaccepted.append(sim.agent_message(conv, rng.choice(REPLIES)))

    def agent_card() -> None:
        unaccepted.append(sim.agent_rich_content(conv))

    def agent_read() -> None:
        if unread:
            sim.agent_read(conv, list(unread))
            unread.clear()

    def consumer_accept() -> None:
        if unaccepted:
            sim.consumer_receipt(conv, list(unaccepted), "ACCEPT")
            accepted.extend(unaccepted)
            unaccepted.clear()

    def consumer_read() -> None:
        if accepted:
            sim.consumer_receipt(conv, list(accepted), "READ")
            accepted.clear()
        elif unaccepted:  # READ without an ACCEPT first
            sim.consumer_receipt(conv, list(unaccepted), "READ")
            unaccepted.clear()

    def transfer_to_agent() -> None:
        if model.assigned_agent is not None:
            ledger.transfers[conv] += 1
            sim.transfer_to_agent(conv)
            if rng.random() < 0.5:
                sim.accept_transfer(conv)

    actions.update(
        consumer_text=consumer_text, consumer_file=consumer_file, agent_text=agent_text,
        agent_card=agent_card, agent_read=agent_read, consumer_accept=consumer_accept,
        consumer_read=consumer_read, transfer_to_skill=transfer_to_skill,
        transfer_to_agent=transfer_to_agent,
    )
    weights = {"consumer_text": 20, "consumer_file": 4, "agent_text": 20, "agent_card": 5,
               "agent_read": 8, "consumer_accept": 10, "consumer_read": 8,
               "transfer_to_skill": 4, "transfer_to_agent": 4}
    for _ in range(rng.randint(2, 9)):
        yield _s(rng, 5, 240)
        actions[rng.choices(list(weights), list(weights.values()))[0]]()
    if kind == "open_answered":
        return
    if kind == "open_transferred":
        yield _s(rng, 30, 300)
        transfer_to_skill()
        return

    yield _s(rng, 60, 600)
    by = "SYSTEM" if rng.random() < 0.1 else rng.choice(("AGENT", "CONSUMER"))
    yield from close(sim, rng, conv, by=by)


def close(sim: Simulator, rng: random.Random, conv: str, *, by: str) -> Iterator[int]:
    """Close: the system closes it all at once; an agent or the consumer close the MAIN
    dialog, and a post-conversation survey follows now and then. A CSAT may come after."""
    if by == "SYSTEM":
        sim.close_stage(conv, by="SYSTEM")
        survey = None
    else:
        survey = sim.close_conversation(conv, by=by, survey=rng.random() < 0.4)
    if survey is not None:
        yield _s(rng, 1, 5)
        sim.survey_question(survey)
        yield _s(rng, 5, 60)
        sim.survey_answer(survey, rng.randrange(2))
        yield _s(rng, 1, 5)
        sim.complete_survey(conv)
    if rng.random() < (0.3 if survey is not None else 0.6):
        yield _s(rng, 30, 600)
        sim.set_csat(conv, rng.randint(1, 5), resolved=rng.random() < 0.7)


async def play(
    sim: Simulator, clock: ScriptedClock, consumers: list[str], rng: random.Random,
    start_ms: int, *, pause: Callable[[], Any],
) -> Ledger:
    """Run the planned conversations interleaved in virtual time; `pause` is awaited between
    steps so that the simulator's sockets keep flowing."""
    ledger = Ledger()
    queue: list[tuple[int, int, Iterator[int] | None, Planned]] = [
        (p.start_ms, n, None, p) for n, p in enumerate(plan(rng, start_ms))
    ]
    heapq.heapify(queue)
    while queue:
        at, n, steps, planned = heapq.heappop(queue)
        clock.move_to(at)
        if steps is None:
            free = [c for c in consumers if sim.world.open_conversation(c) is None]
            assert free, "the scenario needs more consumers: all of them are busy"
            steps = conversation(sim, rng, ledger, rng.choice(free), planned)
        try:
            delay = next(steps)
        except StopIteration:
            continue
        heapq.heappush(queue, (at + delay, n, steps, planned))
        await pause()
    return ledger


# -- the truth ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MessageTruth:
    conversation_id: str
    dialog_id: str
    dialog_type: str
    sequence: int
    author_id: str
    author_role: str
    content_type: str | None
    text: str | None
    server_ms: int
    first_read_ms: int | None
    first_accepted_ms: int | None


@dataclasses.dataclass(frozen=True)
class ConversationTruth:
    conversation_id: str
    consumer_id: str
    skill_id: str
    state: str
    stage: str
    start_ms: int
    end_ms: int | None
    close_reason: str | None
    csat_rate: int | None
    csat_status: str | None
    csat_resolution: bool | None
    ttr_type: str
    ttr_value: int
    effective_ttr_ms: int | None
    first_consumer_ms: int | None
    first_agent_ms: int | None
    consumer_messages: int
    agent_messages: int
    other_messages: int
    transfers: int
    had_survey: bool

    @property
    def start_day(self) -> dt.date:
        return utc(self.start_ms).date()

    @property
    def first_response_s(self) -> float | None:
        if self.first_agent_ms is None or self.first_consumer_ms is None:
            return None
        return (self.first_agent_ms - self.first_consumer_ms) / 1000

    @property
    def within_ttr(self) -> bool | None:
        response = self.first_response_s
        return None if response is None else response <= self.ttr_value

    @property
    def time_to_close_s(self) -> float | None:
        return None if self.end_ms is None else (self.end_ms - self.start_ms) / 1000

    @property
    def messages(self) -> int:
        return self.consumer_messages + self.agent_messages + self.other_messages


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Truth:
    conversations: dict[str, ConversationTruth]
    messages: dict[tuple[str, int], MessageTruth]  # (dialog_id, sequence) -> content event
    #: Every stored messaging change of every dialog, by (dialog_id, sequence), as sent.
    events: dict[tuple[str, int], Json]
    #: Every conversation change the simulator sent, as the change object (UPSERT + result).
    conversation_changes: list[Json]
    ledger: Ledger

    @classmethod
    def of(cls, sim: Simulator, ledger: Ledger) -> Truth:
        messages: dict[tuple[str, int], MessageTruth] = {}
        events: dict[tuple[str, int], Json] = {}
        conversations: dict[str, ConversationTruth] = {}
        for conv in sim.world.conversations.values():
            content: list[MessageTruth] = []
            for dialog in conv.dialogs:
                stored = [dict(change) for change in dialog.events]
                receipts: dict[tuple[int, str], list[tuple[str, int]]] = {}
                for change in stored:
                    events[(dialog.dialog_id, change["sequence"])] = change
                    event = change["event"]
                    if event["type"] == "AcceptStatusEvent":
                        for sequence in event["sequenceList"]:
                            receipts.setdefault((sequence, event["status"]), []).append(
                                (change["originatorId"], change["serverTimestamp"]))
                for change in stored:
                    event = change["event"]
                    if event["type"] not in CONTENT_EVENTS:
                        continue
                    author, sequence = change["originatorId"], change["sequence"]
                    read, accepted = (
                        min((ts for who, ts in receipts.get((sequence, status), [])
                             if who != author), default=None)
                        for status in ("READ", "ACCEPT"))
                    message = event.get("message")
                    content_type = event.get("contentType")
                    if event["type"] == "RichContentEvent":
                        content_type = content_type or RICH_CONTENT
                    content.append(MessageTruth(
                        conv.conv_id, dialog.dialog_id, dialog.dialog_type, sequence, author,
                        change["originatorMetadata"]["role"], content_type,
                        message if isinstance(message, str) else None,
                        change["serverTimestamp"], read, accepted,
                    ))
            for message in content:
                messages[(message.dialog_id, message.sequence)] = message
            answered = [m for m in content if m.dialog_type != POST_SURVEY]
            first_consumer = min((m.server_ms for m in answered if m.author_role == "CONSUMER"),
                                 default=None)
            first_agent = None if first_consumer is None else min(
                (m.server_ms for m in answered
                 if m.author_role in BRAND_ROLES and m.server_ms >= first_consumer),
                default=None)
            roles = collections.Counter(m.author_role for m in content)
            csat = conv.csat or {}
            conversations[conv.conv_id] = ConversationTruth(
                conversation_id=conv.conv_id,
                consumer_id=conv.consumer,
                skill_id=conv.skill_id,
                state=conv.state,
                stage=conv.stage,
                start_ms=conv.start_ts,
                end_ms=conv.end_ts,
                close_reason=conv.close_reason,
                csat_rate=csat.get("csatRate"),
                csat_status=csat.get("status"),
                csat_resolution=csat.get("csatResolutionConfirmation"),
                ttr_type=conv.ttr_type,
                ttr_value=conv.ttr_value,
                effective_ttr_ms=conv.effective_ttr if conv.effective_ttr > 0 else None,
                first_consumer_ms=first_consumer,
                first_agent_ms=first_agent,
                consumer_messages=roles["CONSUMER"],
                agent_messages=sum(roles[role] for role in BRAND_ROLES),
                other_messages=sum(n for role, n in roles.items()
                                   if role not in ("CONSUMER", *BRAND_ROLES)),
                transfers=ledger.transfers[conv.conv_id],
                had_survey=conv.survey is not None,
            )
        changes = [{"type": "UPSERT", "result": result}
                   for kind, result in sim.history if kind == "conversation"]
        return cls(conversations, messages, events, changes, ledger)

    def started(self, start_ms: int, end_ms: int) -> list[ConversationTruth]:
        """Conversations that started in [start_ms, end_ms)."""
        return [c for c in self.conversations.values() if start_ms <= c.start_ms < end_ms]
