"""Seeded background load: many consumers, each working through its conversations.

Each consumer has at most one open conversation at a time (the rule the simulator enforces),
so a consumer's M conversations follow each other while different consumers interleave. One
step is one model action (a message, a receipt, a typing event, a transfer, a close, ...);
steps are paced to the requested rate. The sequence of actions depends only on the seed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator

from recorder.logs import event
from recorder.simulator.interface import SimulatorInterface
from recorder.simulator.model import CLOSE, OPEN, TTR_TYPES, SimulatorError
from recorder.simulator.script import CONSUMER_LINES, REPLIES

log = logging.getLogger(__name__)

SKILLS = ("1284356710", "1284356722", "1284356733")
#: Relative weights of the actions inside an open conversation.
ACTIONS = {
    "consumer_text": 30,
    "agent_text": 25,
    "agent_read": 10,
    "consumer_accept": 10,
    "typing": 10,
    "rich_content": 5,
    "hosted_file": 3,
    "ttr": 2,
    "transfer_skill": 2,
    "transfer_agent": 3,
}
ENDLESS_BUDGET = 20
MIN_BUDGET = 4


def conversation_steps(
    sim: SimulatorInterface, consumer: str, rng: random.Random, budget: int
) -> Iterator[None]:
    """One conversation, one action per `next()`: open, `budget` actions, close, maybe more."""
    conv = sim.create_conversation(consumer, rng.choice(SKILLS))
    yield
    unread: list[int] = []  # consumer messages the agent has not read yet
    unaccepted: list[int] = []  # agent messages the consumer has not acknowledged yet
    names, weights = list(ACTIONS), list(ACTIONS.values())
    for _ in range(max(0, budget - 2)):
        action = rng.choices(names, weights)[0]
        if action == "agent_read" and unread:
            sim.agent_read(conv, unread)
            unread = []
        elif action == "consumer_accept" and unaccepted:
            sim.consumer_receipt(conv, unaccepted, rng.choice(("ACCEPT", "READ")))
            unaccepted = []
        elif action == "typing":
            state = rng.choice(("COMPOSING", "ACTIVE", "PAUSE"))
            if rng.random() < 0.5:
                sim.agent_typing(conv, state)
            else:
                sim.consumer_typing(conv, state)
        elif action == "rich_content":
            unaccepted.append(sim.agent_rich_content(conv))
        elif action == "hosted_file":
            unread.append(sim.consumer_file(conv, "Photo", rng.choice(("PNG", "JPG"))))
        elif action == "ttr":
            sim.set_ttr(conv, rng.choice(TTR_TYPES), rng.choice((300, 600, 3600)))
        elif action == "transfer_skill":
            sim.transfer_to_skill(conv, rng.choice(SKILLS))
        elif action == "transfer_agent":
            sim.transfer_to_agent(conv)
        elif action in ("consumer_text", "agent_read"):
            unread.append(sim.consumer_message(conv, rng.choice(CONSUMER_LINES)))
        else:
            unaccepted.append(sim.agent_message(conv, rng.choice(REPLIES)))
        yield
    by = rng.choice(("AGENT", "CONSUMER"))
    survey = sim.close_conversation(conv, by=by, survey=sim.survey_enabled and rng.random() < 0.5)
    yield
    if survey is not None:
        sim.survey_question(survey)
        yield
        sim.survey_answer(survey, rng.randrange(2))
        yield
        sim.complete_survey(conv)
        yield
    elif rng.random() < 0.5:
        sim.set_csat(conv, rng.randint(1, 5))
        yield


async def run_traffic(
    sim: SimulatorInterface,
    consumers: list[str],
    conversations_per_consumer: int,
    rate: float,
    rng: random.Random,
    *,
    total_events: int | None = None,
    duration_s: float | None = None,
) -> int:
    """Make events until `total_events` or `duration_s` is reached (or forever); returns count."""
    loop = asyncio.get_running_loop()
    endless = total_events is None and duration_s is None
    conversations = max(1, len(consumers) * max(1, conversations_per_consumer))
    if total_events is not None:
        budget = max(MIN_BUDGET, total_events // conversations)
    elif duration_s is not None:
        budget = max(MIN_BUDGET, int(rate * duration_s / conversations))
    else:
        budget = ENDLESS_BUDGET
    remaining = dict.fromkeys(consumers, conversations_per_consumer)
    running: dict[str, Iterator[None]] = {}
    active = list(consumers)
    count = 0
    start = loop.time()
    while active:
        if total_events is not None and count >= total_events:
            break
        if duration_s is not None and loop.time() - start >= duration_s:
            break
        consumer = rng.choice(active)
        steps = running.get(consumer)
        if steps is None:
            if not endless and remaining[consumer] <= 0:
                active.remove(consumer)
                continue
            remaining[consumer] -= 1
            steps = running[consumer] = conversation_steps(sim, consumer, rng, budget)
            if sim.world.open_conversation(consumer) is not None:
                log.warning("traffic: consumer %s already has an open conversation", consumer,
                            extra=event("simulator.traffic.already_open"))
                active.remove(consumer)
                del running[consumer]
                continue
        try:
            next(steps)
        except StopIteration:
            del running[consumer]
            continue
        except SimulatorError as exc:
            # Someone else (a test, a live client) changed the conversation: start another.
            log.debug("traffic: conversation of %s ended early: %s", consumer, exc,
                      extra=event("simulator.traffic.ended_early"))
            del running[consumer]
            continue
        count += 1
        delay = start + count / rate - loop.time() if rate > 0 else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        elif count % 50 == 0:
            await asyncio.sleep(0)  # let the connections write even when behind schedule
    return count


def close_everything(sim: SimulatorInterface, consumers: list[str]) -> None:
    """Close what traffic left open, surveys included, so every conversation is closed (stage
    CLOSE): traffic stopped by its event count may end mid-conversation."""
    for consumer in consumers:
        for conversation_id in list(sim.world.by_consumer.get(consumer, [])):
            conversation = sim.world.conversation(conversation_id)
            if conversation.state == OPEN:
                sim.close_conversation(conversation_id, survey=False)
            elif conversation.stage != CLOSE:
                sim.complete_survey(conversation_id)
