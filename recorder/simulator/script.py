"""Scripted agents: the examples' storyline, answers to consumer messages, the survey bot.

Texts and ids come from seeded generators, so a storyline run twice with the same seed stores
the same events. Answers to what a live client publishes run as tasks with small delays, the
way a human agent (read, type, answer) or the survey bot (thank, complete) would react.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any

from recorder.logs import event
from recorder.simulator.interface import SimulatorInterface
from recorder.simulator.model import POST_SURVEY, Dialog, Json, SimulatorError, new_uuid

log = logging.getLogger(__name__)

REPLIES = (
    "Thanks for the details, let me check that for you.",
    "I can see the order. One moment please.",
    "That is sorted now. Anything else I can do?",
    "I have passed this on to our billing team.",
    "Could you share a screenshot of the error?",
)
CONSUMER_LINES = (
    "Hi, my invoice #A-2291 was charged twice.",
    "Thanks! How long will the refund take?",
    "Is there a reference number?",
    "Great, thank you.",
    "The app shows an error when I pay.",
)
PREVIEW = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhf"
    "DwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
AGENT_CLIENT = {"type": ".ClientProperties", "ipAddress": "198.51.100.7"}


def rich_card(rng: random.Random) -> tuple[Json, list[Json]]:
    """A vertical card (text, text, link button) like `notif_msg_rich_content_from_agent.json`."""
    ref = f"R-{rng.randint(10000, 99999)}"
    card = {
        "type": "vertical",
        "elements": [
            {"type": "text", "text": f"Refund #{ref}", "tooltip": "Refund id",
             "style": {"bold": True, "size": "large"}},
            {"type": "text", "text": "EUR 49.90 - expected within 3-5 business days"},
            {"type": "button", "title": "Track refund", "tooltip": "Track refund",
             "click": {
                 "actions": [{"type": "link", "name": "Track refund",
                              "uri": f"https://example.com/refunds/{ref}"}],
                 "metadata": [{"type": "ExternalId", "id": f"track-refund-{ref}"}],
             }},
        ],
    }
    return card, [{"type": "ExternalId", "id": f"refund-card-{ref}"}]


def survey_question(rng: random.Random) -> tuple[Json, list[Json], list[tuple[str, Json]]]:
    """The survey bot's question: event with quickReplies, `Question` metadata, the answers."""
    question_id = new_uuid(rng)
    answers = [(title, {"type": "Answer", "questionId": question_id, "id": new_uuid(rng),
                        "provider": "AC"}) for title in ("Yes", "No")]
    event = {
        "type": "ContentEvent",
        "message": "Was your issue resolved?",
        "contentType": "text/plain",
        "quickReplies": {
            "type": "quickReplies",
            "itemsPerRow": 8,
            "replies": [
                {"type": "button", "tooltip": title, "title": title,
                 "click": {"metadata": [answer],
                           "actions": [{"type": "publishText", "text": title}]}}
                for title, answer in answers
            ],
        },
    }
    metadata = [{
        "type": "Question", "id": question_id, "groupId": new_uuid(rng),
        "surveyId": str(rng.randint(3_000_000_000, 3_999_999_999)), "provider": "AC",
        "replies": [answer["id"] for _, answer in answers],
    }]
    return event, metadata, answers


def hosted_file(
    rng: random.Random, account: str, consumer: str, caption: str, file_type: str
) -> Json:
    path = f"/v1/AUTH_async-images/{account}/{consumer}_uuid_{new_uuid(rng)}.{file_type}"
    return {
        "type": "ContentEvent",
        "contentType": "hosted/file",
        "message": {"caption": caption, "relativePath": path, "fileType": file_type,
                    "preview": PREVIEW},
    }


class Script:
    """Reactions of scripted agents to what a live consumer publishes."""

    def __init__(self, sim: SimulatorInterface, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self._tasks: set[asyncio.Task[Any]] = set()

    def consumer_published(self, dialog: Dialog, change: Json) -> None:
        if not self.sim.auto_reply or "sequence" not in change:
            return
        event_type = change["event"].get("type")
        if dialog.dialog_type == POST_SURVEY:
            if event_type == "ContentEvent":
                self._spawn(self._finish_survey(dialog.dialog_id))
        elif event_type in ("ContentEvent", "RichContentEvent"):
            self._spawn(self._answer(dialog.dialog_id, change["sequence"]))

    async def _answer(self, dialog_id: str, sequence: int) -> None:
        delay = self.sim.reply_delay_s
        await asyncio.sleep(delay)
        self.sim.agent_read(dialog_id, [sequence])
        self.sim.agent_typing(dialog_id, "COMPOSING")
        await asyncio.sleep(delay)
        self.sim.agent_message(dialog_id, self.rng.choice(REPLIES))
        self.sim.agent_typing(dialog_id, "ACTIVE")

    async def _finish_survey(self, dialog_id: str) -> None:
        await asyncio.sleep(self.sim.reply_delay_s)
        self.sim.agent_message(dialog_id, "Thank you for your feedback!")
        self.sim.complete_survey(self.sim.world.dialog(dialog_id).conversation_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guard(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            await coroutine
        except SimulatorError as exc:
            # The conversation moved on meanwhile (closed, say): the agent just stops.
            log.debug("scripted reaction skipped: %s", exc, extra=event("simulator.script.skipped"))

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_storyline(sim: SimulatorInterface, conv: str, *, ending: str = "survey",
                        delay_s: float = 0.01) -> None:
    """The examples' storyline on one conversation (INDEX.md), then an ending.

    `ending`: "survey" (consumer closes, POST_SURVEY question, answer, completion; falls back
    to "csat" when surveys are off), "csat" (agent closes, legacy CSAT), or "open".
    """
    rng = sim.world.rng

    async def pause() -> None:
        await asyncio.sleep(delay_s)

    first = sim.consumer_message(conv, CONSUMER_LINES[0])
    await pause()
    sim.assign_agent(conv)
    sim.agent_read(conv, [first])
    sim.agent_typing(conv, "COMPOSING")
    await pause()
    hello = sim.agent_message(conv, "Hello! I'm sorry about that, let me check the invoice.")
    sim.agent_typing(conv, "ACTIVE")
    sim.consumer_receipt(conv, [hello], "ACCEPT")
    await pause()
    found = sim.agent_message(conv, "I can see two charges. I'm refunding the duplicate now.")
    sim.consumer_typing(conv, "COMPOSING")
    question = sim.consumer_message(conv, CONSUMER_LINES[1])
    sim.consumer_typing(conv, "ACTIVE")
    await pause()
    card = sim.agent_rich_content(conv)
    sim.consumer_receipt(conv, [found, card], "ACCEPT")
    sim.agent_read(conv, [question])
    await pause()
    shot = sim.consumer_file(conv, "Screenshot of the double charge")
    sim.agent_message(conv, "Got the screenshot, thanks. The refund is confirmed.")
    sim.agent_read(conv, [shot])
    await pause()
    sim.set_ttr(conv, "PRIORITIZED", 600)
    sim.transfer_to_skill(conv, "1284356722")
    await pause()
    sim.transfer_to_agent(conv)
    await pause()
    sim.accept_transfer(conv)
    sim.agent_message(conv, f"Hi, I'm taking over. Reference {rng.randint(1000, 9999)}.")
    await pause()
    if ending == "open":
        return
    if ending == "survey" and sim.survey_enabled:
        survey = sim.close_conversation(conv, by="CONSUMER", survey=True)
        assert survey is not None
        await pause()
        sim.survey_question(survey)
        await pause()
        sim.survey_answer(survey, 0)
        await pause()
        sim.complete_survey(conv)
    else:
        sim.close_conversation(conv, by="AGENT", survey=False)
        await pause()
        sim.set_csat(conv, 4)
