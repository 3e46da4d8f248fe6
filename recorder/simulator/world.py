"""Mutations of the model: everything that changes a conversation or appends an event.

Each mutation updates the truth first and then tells the listener (the connection hub), which
renders frames per connection. Faults act on frames only, never here, so the stored events are
exactly what a correct client must end up with. The one exception is by design: an "unknown
event" fault adds a real, stored `FutureEvent` (a client must keep unknown events too).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from recorder.simulator.model import (
    AGENT,
    ASSIGNED_AGENT,
    CLOSE,
    CONSUMER,
    CONTROLLER,
    MAIN,
    OPEN,
    POST_SURVEY,
    READER,
    Clock,
    Conversation,
    Dialog,
    Json,
    Participant,
    SimulatorError,
    messaging_change,
    new_dialog_id,
    new_uuid,
)

ConversationListener = Callable[[Conversation], None]
EventListener = Callable[[Conversation, Dialog, Json, bool], None]

AGENT_POOL_SIZE = 6


class World:
    def __init__(
        self,
        account: str,
        rng: random.Random,
        clock: Clock,
        *,
        gap_probability: float = 0.05,
        unknown_probability: Callable[[], float] = lambda: 0.0,
        unknown_rng: random.Random | None = None,
    ) -> None:
        self.account = account
        self.rng = rng
        self.clock = clock
        self.gap_probability = gap_probability
        self._unknown_probability = unknown_probability
        self._unknown_rng = unknown_rng or random.Random(0)
        self.conversations: dict[str, Conversation] = {}
        self.dialogs: dict[str, Dialog] = {}
        self.by_consumer: dict[str, list[str]] = {}
        #: Every model change in order: ("conversation", details), ("event", change) and
        #: ("chat", change). Two runs with the same seed and calls produce the same history.
        self.history: list[tuple[str, Json]] = []
        self.keep_history = True
        self.agents = [new_uuid(rng) for _ in range(AGENT_POOL_SIZE)]
        self.survey_bot = new_uuid(rng)
        self.controller = new_uuid(rng)
        self._next_agent = 0
        self.on_conversation: ConversationListener = lambda conv: None
        self.on_event: EventListener = lambda conv, dialog, change, stored: None
        #: Sees each stored change before `on_event` (withholding decides there).
        self.on_store: Callable[[Dialog, Json], None] = lambda dialog, change: None

    # -- lookups ---------------------------------------------------------------------------------

    def conversation(self, conv_id: str) -> Conversation:
        try:
            return self.conversations[conv_id]
        except KeyError:
            raise SimulatorError(f"unknown conversation {conv_id!r}") from None

    def dialog(self, dialog_id: str) -> Dialog:
        """A dialog by id; a conversation id names its MAIN dialog (the ids are equal)."""
        try:
            return self.dialogs[dialog_id]
        except KeyError:
            raise SimulatorError(f"unknown dialog {dialog_id!r}") from None

    def open_conversation(self, consumer: str) -> Conversation | None:
        # At most one is open per consumer, the newest: a conversation never reopens, and a
        # new one is refused while another is open. Not a scan: identities with long
        # histories (tens of thousands of conversations) are part of what is simulated.
        conversations = self.by_consumer.get(consumer)
        if conversations:
            newest = self.conversations[conversations[-1]]
            if newest.state == OPEN:
                return newest
        return None

    def next_agent(self) -> str:
        agent = self.agents[self._next_agent % len(self.agents)]
        self._next_agent += 1
        return agent

    # -- conversation lifecycle ------------------------------------------------------------------

    def create_conversation(
        self,
        consumer: str,
        skill_id: str,
        *,
        ttr_type: str = "NORMAL",
        ttr_value: int = 3600,
        conv_id: str | None = None,
    ) -> Conversation:
        if self.open_conversation(consumer) is not None:
            raise SimulatorError(f"consumer {consumer} already has an open conversation")
        conv_id = conv_id or new_uuid(self.rng)
        now = self.clock.now_ms()
        main = Dialog(conv_id, conv_id, MAIN, now, now, [Participant(consumer, CONSUMER)])
        conv = Conversation(
            conv_id, consumer, self.account, skill_id, now, now,
            [Participant(consumer, CONSUMER)], [main], ttr_type=ttr_type, ttr_value=ttr_value,
        )
        conv.effective_ttr = now + ttr_value * 1000
        self.conversations[conv_id] = conv
        self.dialogs[conv_id] = main
        self.by_consumer.setdefault(consumer, []).append(conv_id)
        self._record(conv)
        return conv

    def assign_agent(self, conv: Conversation, agent: str | None = None) -> str:
        """An agent accepts the conversation: ASSIGNED_AGENT joins, the TTR clock stops."""
        self._require_open(conv)
        agent = agent or self.next_agent()
        self._demote_assigned(conv)
        conv.add_participant(agent, ASSIGNED_AGENT)
        conv.main.participants.append(Participant(agent, ASSIGNED_AGENT))
        conv.handled = True
        conv.effective_ttr = -1
        self._changed(conv, conv.main)
        return agent

    def transfer_to_skill(self, conv: Conversation, skill_id: str) -> None:
        """The assigned agent is removed (kept as READER) and the skill changes."""
        self._require_open(conv)
        self._demote_assigned(conv)
        conv.skill_id = skill_id
        conv.handled = True
        conv.effective_ttr = self.clock.now_ms() + conv.ttr_value * 1000
        self._changed(conv, conv.main)

    def transfer_to_agent(self, conv: Conversation, agent: str | None = None) -> str:
        """A new ASSIGNED_AGENT is SUGGESTED on the MAIN dialog until it accepts."""
        self._require_open(conv)
        current = conv.assigned_agent
        agent = agent or self.next_agent()
        if current is not None and current.id == agent:
            agent = self.next_agent()
        self._demote_assigned(conv)
        conv.add_participant(agent, ASSIGNED_AGENT)
        conv.main.participants.append(Participant(agent, ASSIGNED_AGENT, "SUGGESTED"))
        conv.handled = True
        conv.effective_ttr = self.clock.now_ms() + conv.ttr_value * 1000
        self._changed(conv, conv.main)
        return agent

    def accept_transfer(self, conv: Conversation) -> None:
        agent = conv.assigned_agent
        if agent is None or agent.state != "SUGGESTED":
            raise SimulatorError(f"conversation {conv.conv_id} has no suggested agent")
        agent.state = "ACTIVE"
        conv.effective_ttr = -1
        self._changed(conv, conv.main)

    def set_ttr(self, conv: Conversation, ttr_type: str, value: int) -> None:
        conv.ttr_type = ttr_type
        conv.ttr_value = value
        if conv.state == OPEN and conv.assigned_agent is None:
            conv.effective_ttr = self.clock.now_ms() + value * 1000
        self._changed(conv)

    def set_csat(self, conv: Conversation, csat: Json) -> None:
        conv.csat = {"field": "CSATRate", **csat}
        self._changed(conv)

    def close_main(
        self, conv: Conversation, by: str, *, cause: str | None = None, survey: bool = False
    ) -> Dialog | None:
        """Close the MAIN dialog; with a survey the container stays open (§13 step 3)."""
        self._require_open(conv)
        now = self.clock.now_ms()
        main = conv.main
        main.state = CLOSE
        main.end_ts = now
        main.closed_by = by
        main.closed_cause = cause if cause is not None else _default_cause(by)
        main.meta_ts = max(now, main.meta_ts + 1)
        conv.state = CLOSE
        conv.close_reason = by
        conv.effective_ttr = -1
        survey_dialog = None
        if survey:
            survey_dialog = self._open_survey(conv, now)
        else:
            conv.stage = CLOSE
            conv.end_ts = now
        self._changed(conv)
        return survey_dialog

    def _open_survey(self, conv: Conversation, now: int) -> Dialog:
        agent = conv.assigned_agent
        if agent is not None:
            conv.add_participant(agent.id, READER)
        conv.add_participant(self.survey_bot, AGENT)
        conv.add_participant(self.controller, CONTROLLER)
        conv.main.participants.insert(1, Participant(self.controller, CONTROLLER))
        people = [Participant(conv.consumer, CONSUMER), Participant(self.survey_bot, AGENT)]
        if agent is not None:
            people.append(Participant(agent.id, READER))
        survey = Dialog(
            new_dialog_id(self.rng), conv.conv_id, POST_SURVEY, now, now + 1, people,
            meta_data={"appInstallId": new_uuid(self.rng)},
        )
        conv.dialogs.append(survey)
        self.dialogs[survey.dialog_id] = survey
        return survey

    def close_dialog(
        self, dialog: Dialog, by: str, cause: str | None = None, *, survey: bool = False
    ) -> None:
        """Close one dialog: MAIN closes the conversation, the last open one closes the stage."""
        conv = self.conversation(dialog.conversation_id)
        if dialog.dialog_type == MAIN:
            self.close_main(conv, by, cause=cause, survey=survey)
            return
        if not dialog.is_open:
            raise SimulatorError(f"dialog {dialog.dialog_id} is already closed")
        now = self.clock.now_ms()
        dialog.state = CLOSE
        dialog.end_ts = now
        dialog.closed_by = by
        dialog.closed_cause = cause if cause is not None else _default_cause(by)
        dialog.meta_ts = max(now, dialog.meta_ts + 1)
        if all(not d.is_open for d in conv.dialogs):
            conv.stage = CLOSE
            conv.end_ts = now
        self._changed(conv)

    def complete_survey(self, conv: Conversation) -> None:
        survey = conv.survey
        if survey is None or not survey.is_open:
            raise SimulatorError(f"conversation {conv.conv_id} has no open survey")
        self.close_dialog(survey, AGENT, "Completed")

    def close_stage(self, conv: Conversation, by: str) -> None:
        """`Stage` CLOSE: close every open dialog and the container, skipping any survey."""
        if conv.stage == CLOSE:
            raise SimulatorError(f"conversation {conv.conv_id} is already closed")
        now = self.clock.now_ms()
        if conv.state == OPEN:
            conv.state = CLOSE
            conv.close_reason = by
        for dialog in conv.dialogs:
            if dialog.is_open:
                dialog.state = CLOSE
                dialog.end_ts = now
                dialog.closed_by = by
                dialog.closed_cause = _default_cause(by)
                dialog.meta_ts = max(now, dialog.meta_ts + 1)
        conv.stage = CLOSE
        conv.end_ts = now
        conv.effective_ttr = -1
        self._changed(conv)

    # -- messaging events ------------------------------------------------------------------------

    def append(
        self,
        dialog: Dialog,
        originator: str,
        role: str,
        event: Json,
        *,
        metadata: list[Json] | None = None,
        client_properties: Json | None = None,
        with_metadata_key: bool = False,
    ) -> Json:
        """Store a sequenced event; an occasional gap stands for an event the consumer can't see."""
        if not dialog.is_open:
            raise SimulatorError(f"dialog {dialog.dialog_id} is closed")
        conv = self.conversation(dialog.conversation_id)
        change = self._store(
            conv, dialog, originator, role, event, metadata=metadata,
            client_properties=client_properties, with_metadata_key=with_metadata_key,
        )
        probability = self._unknown_probability()
        if probability > 0 and self._unknown_rng.random() < probability:
            future = {"type": "FutureEvent", "payload": {"hint": "unknown to this client"}}
            self._store(conv, dialog, self.controller, CONTROLLER, future)
        return change

    def _store(
        self, conv: Conversation, dialog: Dialog, originator: str, role: str, event: Json,
        **options: Any,
    ) -> Json:
        if dialog.events and self.rng.random() < self.gap_probability:
            dialog.next_sequence += self.rng.randint(1, 2)
        sequence = dialog.next_sequence
        dialog.next_sequence += 1
        change = messaging_change(
            dialog, originator, role, event,
            sequence=sequence, timestamp=self.clock.now_ms(), **options,
        )
        dialog.events.append(change)
        self._remember("event", change)
        self.on_store(dialog, change)
        self.on_event(conv, dialog, change, True)
        return change

    def chat_state(
        self, dialog: Dialog, originator: str, role: str, state: str,
        *, client_properties: Json | None = None,
    ) -> Json:
        """Typing and presence: pushed live, never stored, never replayed."""
        conv = self.conversation(dialog.conversation_id)
        event = {"type": "ChatStateEvent", "chatState": state}
        change = messaging_change(
            dialog, originator, role, event, sequence=None, timestamp=None,
            client_properties=client_properties,
        )
        self._remember("chat", change)
        self.on_event(conv, dialog, change, False)
        return change

    # -- helpers ---------------------------------------------------------------------------------

    def _require_open(self, conv: Conversation) -> None:
        if conv.state != OPEN:
            raise SimulatorError(f"conversation {conv.conv_id} is closed")

    def _demote_assigned(self, conv: Conversation) -> None:
        """The current assigned agent stays in the conversation as READER (see the examples)."""
        agent = conv.assigned_agent
        if agent is None:
            return
        conv.participants = [
            p for p in conv.participants if not (p.id == agent.id and p.role == ASSIGNED_AGENT)
        ]
        conv.add_participant(agent.id, READER)
        main = conv.main
        if any(p.id == agent.id and p.role == READER for p in main.participants):
            main.participants.remove(agent)  # already a reader from an earlier transfer
        else:
            agent.role = READER
            agent.state = "ACTIVE"

    def _changed(self, conv: Conversation, dialog: Dialog | None = None) -> None:
        now = conv.touch(self.clock.now_ms())
        if dialog is not None:
            dialog.meta_ts = max(now, dialog.meta_ts + 1)
        self._record(conv)

    def _remember(self, kind: str, change: Json) -> None:
        if self.keep_history:
            self.history.append((kind, change))

    def _record(self, conv: Conversation) -> None:
        if self.keep_history:
            self.history.append(("conversation", conv.result()))
        self.on_conversation(conv)


def _default_cause(by: str) -> str | None:
    # LivePerson's examples show a cause for consumer closes and none for agent closes.
    return "Closed by consumer" if by == CONSUMER else None
