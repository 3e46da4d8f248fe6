"""Withholding: stored events the socket never delivers, live or on replay, until released.

LivePerson's Messaging History can hold events a socket never showed (§12a); this fault makes
such holes on purpose so that a client's reconciliation against the history has something to
find. A withheld event stays in `Dialog.events` (the truth, which the history serves); only
`Hub.event_added` and the replay of `ms.SubscribeMessagingEvents` skip it.

Decisions use their own `random.Random`, so turning withholding on never shifts the model's
ids, texts, sequence gaps or traffic.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

from recorder.simulator.faults import Faults
from recorder.simulator.model import (
    HISTORY_EVENT_TYPES,
    Conversation,
    Dialog,
    Json,
    SimulatorError,
)
from recorder.simulator.world import World

#: Pushes released changes of one dialog to the sockets subscribed to it.
Push = Callable[[Conversation, Dialog, list[Json]], None]


class Withholder:
    def __init__(
        self, world: World, faults: Callable[[], Faults], rng: random.Random, push: Push
    ) -> None:
        self._world = world
        # A getter, not the object: tests replace `sim.faults` wholesale at runtime.
        self._faults = faults
        self._rng = rng
        self._push = push

    def on_store(self, dialog: Dialog, change: Json) -> None:
        """Decide, as an event is stored and before it is pushed, whether it is withheld."""
        sequence = change["sequence"]
        if dialog.withhold_tail:
            dialog.withheld.add(sequence)  # a tail takes every sequenced event, any type
            return
        if change["event"].get("type") not in HISTORY_EVENT_TYPES:
            return  # nothing the history could reveal: never withheld on its own
        faults = self._faults()
        tail, single = faults.withhold_tail_probability, faults.withhold_probability
        # Draw only when a switch is on, so the generator stays put while withholding is off.
        if tail > 0 and self._rng.random() < tail:
            dialog.withhold_tail = True
            dialog.withheld.add(sequence)
        elif single > 0 and self._rng.random() < single:
            dialog.withheld.add(sequence)

    def withhold(self, dialog_id: str, sequence: int) -> None:
        """Withhold one already stored event by hand (it may have been delivered already)."""
        dialog = self._world.dialog(dialog_id)
        if not any(event["sequence"] == sequence for event in dialog.events):
            raise SimulatorError(f"dialog {dialog.dialog_id} has no stored event {sequence}")
        dialog.withheld.add(sequence)

    def withheld_events(self) -> list[Json]:
        """Copies of every withheld event, dialog by dialog (creation order), by sequence."""
        return [
            copy.deepcopy(event)
            for dialog in self._withholding()
            for event in dialog.events
            if event["sequence"] in dialog.withheld
        ]

    def release(self, dialog_id: str | None = None) -> int:
        """Stop withholding (every dialog, or one; a tail ends too) and push what was held
        to the subscribed sockets in sequence order. The probabilities keep acting on new
        events. Returns how many events were released."""
        dialogs = self._withholding() if dialog_id is None else [self._world.dialog(dialog_id)]
        released = 0
        for dialog in dialogs:
            events = [e for e in dialog.events if e["sequence"] in dialog.withheld]
            dialog.withheld.clear()
            dialog.withhold_tail = False
            if events:
                self._push(self._world.conversation(dialog.conversation_id), dialog, events)
            released += len(events)
        return released

    def _withholding(self) -> list[Dialog]:
        # A scan over every dialog, but only tests call it; storing an event stays O(1).
        return [d for d in self._world.dialogs.values() if d.withheld or d.withhold_tail]
