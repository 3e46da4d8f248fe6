"""`Simulator`: the facade tests and the CLI use. It owns the model, the server and the faults.

Randomness comes from separate `random.Random` instances derived from the seed, one per
concern, so that fault decisions or connection timing never shift the model's ids, texts,
sequence gaps or traffic (given the same calls, the same seed yields the same history).
"""

from __future__ import annotations

import asyncio
import copy
import random
from types import TracebackType

from recorder.simulator import rest, script
from recorder.simulator.faults import Faults
from recorder.simulator.filestore import FileStore
from recorder.simulator.journal import CloseRecord, ReceivedFrame, RestRequest, SentFrame
from recorder.simulator.model import (
    AGENT,
    ASSIGNED_AGENT,
    CONSUMER,
    MAIN,
    Clock,
    Conversation,
    Dialog,
    Json,
    SimulatorError,
    new_uuid,
)
from recorder.simulator.server import SimServer
from recorder.simulator.tokens import TokenIssuer
from recorder.simulator.traffic import run_traffic
from recorder.simulator.withhold import Withholder
from recorder.simulator.world import World


class Simulator:
    """UMS consumer socket, CSDS, IdP, profiles, history on one port; a scriptable model; faults.

    Model actions (`create_conversation`, `agent_message`, ...) take a conversation id (its
    MAIN dialog) or a dialog id, change the truth and push frames to subscribed sockets at
    once. `stored_events`, `conversation` and `journal` tell tests what a client should have.
    """

    def __init__(
        self,
        account: str = "71234567",
        seed: int = 0,
        *,
        faults: Faults | None = None,
        gap_probability: float = 0.05,
        auto_reply: bool = True,
        reply_delay_s: float = 0.05,
        survey_enabled: bool = True,
        csds_list_shape: bool = False,
        init_timeout_s: float = 5.0,
        signup_ttl_s: float = 3600.0,
        clock_start_ms: int | None = None,
        default_skill: str = "1284356710",
        keep_journal: bool = True,
    ) -> None:
        self.account = account
        self.seed = seed
        self.faults = faults or Faults()
        self.auto_reply = auto_reply
        self.reply_delay_s = reply_delay_s
        self.survey_enabled = survey_enabled
        self.csds_list_shape = csds_list_shape
        self.init_timeout_s = init_timeout_s
        self.signup_ttl_s = signup_ttl_s
        self.default_skill = default_skill
        self.clock = Clock(clock_start_ms)
        self.fault_rng = random.Random(f"{seed}:faults")
        self._misc_rng = random.Random(f"{seed}:misc")
        #: Off for long runs (the CLI): journal, received frames and history grow without end.
        self.keep_journal = keep_journal
        self.journal: list[SentFrame] = []
        self.received: list[ReceivedFrame] = []
        self.closes: list[CloseRecord] = []
        self.request_count = 0
        self.rest_requests: list[RestRequest] = []
        self.rest_request_count = 0
        self.tokens = TokenIssuer(account, random.Random(f"{seed}:identities"))
        self.files = FileStore(account, self._misc_rng)
        self.world = World(
            account, random.Random(seed), self.clock, gap_probability=gap_probability,
            unknown_probability=lambda: self.faults.unknown_event_probability,
            unknown_rng=random.Random(f"{seed}:unknown"),
        )
        self.world.keep_history = keep_journal
        self.server = SimServer(self)
        self.world.on_conversation = self.server.hub.conversation_changed
        self.world.on_event = self.server.hub.event_added
        self.withholder = Withholder(self.world, lambda: self.faults,
                                     random.Random(f"{seed}:withhold"), self.server.hub.push_events)
        self.world.on_store = self.withholder.on_store
        self.script = script.Script(self, random.Random(f"{seed}:script"))
        self._traffic_rng = random.Random(f"{seed}:traffic")
        self._traffic: set[asyncio.Task[int]] = set()
        self._questions: dict[str, tuple[int, list[tuple[str, Json]]]] = {}
        #: Consumers created or named by `start_traffic`; their tokens via `token_for`.
        self.traffic_consumers: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await self.server.start(host, port)

    async def stop(self) -> None:
        for task in list(self._traffic):
            task.cancel()
        await asyncio.gather(*self._traffic, return_exceptions=True)
        await self.script.stop()
        await self.server.stop()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.server.host}:{self.server.port}"

    def ws_endpoint(self) -> str:
        """The full consumer websocket URL, as a client builds it from `ws_url`."""
        return f"{self.ws_url}/ws_api/account/{self.account}/messaging/consumer?v=3"

    # -- identities ------------------------------------------------------------------------------

    def issue_token(
        self, sub: str | None = None, ttl_s: float = 3600.0, unauthenticated: bool = False
    ) -> str:
        return self.tokens.issue(sub, ttl_s, unauthenticated)

    def token_for(self, sub: str) -> str:
        """The latest token issued for `sub` (one valid for an hour is issued if none was)."""
        return self.tokens.latest(sub) or self.tokens.issue(sub)

    def new_consumer(self) -> str:
        return self.tokens.new_sub()

    def new_subscription_id(self) -> str:
        return new_uuid(self._misc_rng)

    def agent_profile(self, agent_id: str) -> Json | None:
        """The public profile the CDN serves for an agent of the pool; None where it 404s."""
        if agent_id not in self.world.agents or agent_id in self.faults.unknown_agents:
            return None
        return rest.agent_profile(self.seed, agent_id)

    # -- conversations ---------------------------------------------------------------------------

    def create_conversation(self, consumer: str, skill_id: str | None = None) -> str:
        return self.world.create_conversation(consumer, skill_id or self.default_skill).conv_id

    def assign_agent(self, conv: str, agent: str | None = None) -> str:
        return self.world.assign_agent(self._conv(conv), agent)

    def transfer_to_skill(self, conv: str, skill_id: str) -> None:
        self.world.transfer_to_skill(self._conv(conv), skill_id)

    def transfer_to_agent(self, conv: str, agent: str | None = None) -> str:
        return self.world.transfer_to_agent(self._conv(conv), agent)

    def accept_transfer(self, conv: str) -> None:
        self.world.accept_transfer(self._conv(conv))

    def set_ttr(self, conv: str, ttr_type: str, value: int) -> None:
        self.world.set_ttr(self._conv(conv), ttr_type, value)

    def close_conversation(
        self, conv: str, by: str = "AGENT", *, survey: bool | None = None,
        cause: str | None = None,
    ) -> str | None:
        """Close the MAIN dialog; returns the POST_SURVEY dialog id when a survey opened."""
        with_survey = self.survey_enabled if survey is None else survey
        dialog = self.world.close_main(self._conv(conv), by, cause=cause, survey=with_survey)
        return dialog.dialog_id if dialog is not None else None

    def close_stage(self, conv: str, by: str = "CONSUMER") -> None:
        self.world.close_stage(self._conv(conv), by)

    def set_csat(
        self, conv: str, rate: int, *, resolved: bool = True, status: str = "FILLED"
    ) -> None:
        csat = {"csatRate": rate, "csatResolutionConfirmation": resolved, "status": status}
        self.world.set_csat(self._conv(conv), csat)

    def survey_question(self, dialog: str) -> int:
        """The survey bot greets and asks; returns the question's sequence."""
        survey = self._survey(dialog)
        bot = self.world.survey_bot
        greeting = {"type": "ContentEvent", "contentType": "text/plain",
                    "message": "Thanks for chatting with us! One quick question."}
        self.world.append(survey, bot, AGENT, greeting, with_metadata_key=True)
        event, metadata, answers = script.survey_question(self.world.rng)
        change = self.world.append(survey, bot, AGENT, event, metadata=metadata)
        self._questions[survey.dialog_id] = (change["sequence"], answers)
        return int(change["sequence"])

    def survey_answer(self, dialog: str, reply: int = 0) -> int:
        """The consumer clicks a quick reply: ACTION receipt, then the text, both with metadata."""
        survey = self._survey(dialog)
        if survey.dialog_id not in self._questions:
            raise SimulatorError(f"no survey question was asked in {survey.dialog_id}")
        sequence, answers = self._questions[survey.dialog_id]
        title, answer = answers[reply]
        consumer = self.world.conversation(survey.conversation_id).consumer
        action = {"type": "AcceptStatusEvent", "status": "ACTION", "sequenceList": [sequence]}
        self.world.append(survey, consumer, CONSUMER, action, metadata=[dict(answer)])
        text = {"type": "ContentEvent", "contentType": "text/plain", "message": title}
        return self._seq(self.world.append(survey, consumer, CONSUMER, text,
                                           metadata=[dict(answer)]))

    def complete_survey(self, conv: str) -> None:
        self.world.complete_survey(self._conv(conv))

    # -- messaging events ------------------------------------------------------------------------

    def consumer_message(self, conv: str, text: str, *, metadata: list[Json] | None = None) -> int:
        dialog, consumer = self._consumer_side(conv)
        event = {"type": "ContentEvent", "contentType": "text/plain", "message": text}
        return self._seq(self.world.append(dialog, consumer, CONSUMER, event, metadata=metadata))

    def consumer_receipt(self, conv: str, sequences: list[int], status: str = "ACCEPT") -> int:
        dialog, consumer = self._consumer_side(conv)
        event = {"type": "AcceptStatusEvent", "status": status, "sequenceList": list(sequences)}
        return self._seq(self.world.append(dialog, consumer, CONSUMER, event))

    def consumer_file(self, conv: str, caption: str = "Screenshot", file_type: str = "PNG") -> int:
        dialog, consumer = self._consumer_side(conv)
        event = script.hosted_file(self.world.rng, self.account, consumer, caption, file_type)
        return self._seq(self.world.append(dialog, consumer, CONSUMER, event))

    def consumer_typing(self, conv: str, state: str = "COMPOSING") -> None:
        dialog, consumer = self._consumer_side(conv)
        self.world.chat_state(dialog, consumer, CONSUMER, state)

    def agent_message(self, conv: str, text: str, *, metadata: list[Json] | None = None) -> int:
        dialog, agent, role = self._agent_side(conv)
        event = {"type": "ContentEvent", "contentType": "text/plain", "message": text}
        client = script.AGENT_CLIENT if role == ASSIGNED_AGENT else None
        return self._seq(self.world.append(
            dialog, agent, role, event, metadata=metadata, client_properties=client
        ))

    def agent_rich_content(self, conv: str, content: Json | None = None) -> int:
        dialog, agent, role = self._agent_side(conv)
        card, metadata = script.rich_card(self.world.rng)
        event = {"type": "RichContentEvent", "content": content or card}
        return self._seq(self.world.append(dialog, agent, role, event, metadata=metadata))

    def agent_read(self, conv: str, sequences: list[int]) -> int:
        dialog, agent, role = self._agent_side(conv)
        event = {"type": "AcceptStatusEvent", "status": "READ", "sequenceList": list(sequences)}
        return self._seq(self.world.append(dialog, agent, role, event))

    def agent_typing(self, conv: str, state: str = "COMPOSING") -> None:
        dialog, agent, role = self._agent_side(conv)
        self.world.chat_state(dialog, agent, role, state)

    # -- scripted runs ---------------------------------------------------------------------------

    async def run_storyline(
        self, conv: str, *, ending: str = "survey", delay_s: float = 0.01
    ) -> None:
        await script.run_storyline(self, conv, ending=ending, delay_s=delay_s)

    def start_traffic(
        self,
        consumers: int | list[str],
        conversations_per_consumer: int,
        rate: float,
        total_events: int | None = None,
        duration_s: float | None = None,
    ) -> asyncio.Task[int]:
        """Seeded load in the background; the task's result is the number of events made.

        With an int, that many consumers are created (see `traffic_consumers` and
        `token_for`). With neither `total_events` nor `duration_s` it runs until stopped.
        """
        subs = [self.new_consumer() for _ in range(consumers)] if isinstance(consumers, int) \
            else list(consumers)
        for sub in subs:
            self.token_for(sub)
        self.traffic_consumers.extend(s for s in subs if s not in self.traffic_consumers)
        task = asyncio.create_task(run_traffic(
            self, subs, conversations_per_consumer, rate, self._traffic_rng,
            total_events=total_events, duration_s=duration_s,
        ), name="sim-traffic")
        self._traffic.add(task)
        task.add_done_callback(self._traffic.discard)
        return task

    # -- connections -----------------------------------------------------------------------------

    async def close_connections(self, code: int = 1000, reason: str = "") -> None:
        """Close every open socket with a close frame carrying `code`."""
        connections = list(self.server.hub.connections.values())
        await asyncio.gather(*(c.close(code, reason) for c in connections))

    def advance_clock(self, ms: int) -> None:
        """Let `ms` milliseconds pass on the virtual clock (`clock_start_ms`)."""
        self.clock.advance(ms)

    def drop_connections(self) -> None:
        """End every open socket abruptly, without a close frame."""
        for conn in list(self.server.hub.connections.values()):
            conn.drop()

    def connection_count(self) -> int:
        return sum(1 for c in self.server.hub.connections.values() if not c.closed)

    # -- withholding: stored events only the history shows (see withhold.py) ------------------

    def withhold(self, dialog_id: str, sequence: int) -> None:
        self.withholder.withhold(dialog_id, sequence)

    def withheld_events(self) -> list[Json]:
        return self.withholder.withheld_events()

    def release_withheld(self, dialog_id: str | None = None) -> int:
        """Deliver the withheld events (all, or one dialog's) live; returns how many."""
        return self.withholder.release(dialog_id)

    # -- truth -----------------------------------------------------------------------------------

    def stored_events(self, dialog_id: str) -> list[Json]:
        """Every stored (sequenced) event of a dialog, in order: what a client must end with."""
        return copy.deepcopy(self.world.dialog(dialog_id).events)

    def dialog_ids(self, consumer: str) -> list[str]:
        return [d.dialog_id for conv in self._conversations(consumer) for d in conv.dialogs]

    def conversation_ids(self, consumer: str) -> list[str]:
        return [conv.conv_id for conv in self._conversations(consumer)]

    def conversation(self, conv_id: str) -> Json:
        """Current `conversationDetails` as a MULTI_DIALOG client sees it."""
        return self._conv(conv_id).details(multi_dialog=True)

    @property
    def history(self) -> list[tuple[str, Json]]:
        return self.world.history

    # -- helpers ---------------------------------------------------------------------------------

    def _conv(self, conv_or_dialog: str) -> Conversation:
        return self.world.conversation(self.world.dialog(conv_or_dialog).conversation_id)

    def _conversations(self, consumer: str) -> list[Conversation]:
        return [self.world.conversations[c] for c in self.world.by_consumer.get(consumer, [])]

    def _survey(self, dialog_or_conv: str) -> Dialog:
        dialog = self.world.dialog(dialog_or_conv)
        if dialog.dialog_type == MAIN:
            survey = self.world.conversation(dialog.conversation_id).survey
            if survey is None:
                raise SimulatorError(f"conversation {dialog_or_conv} has no survey dialog")
            dialog = survey
        return dialog

    def _consumer_side(self, conv: str) -> tuple[Dialog, str]:
        dialog = self.world.dialog(conv)
        return dialog, self.world.conversation(dialog.conversation_id).consumer

    def _agent_side(self, conv: str) -> tuple[Dialog, str, str]:
        """Who speaks for the brand in a dialog: the survey bot, or the assigned agent."""
        dialog = self.world.dialog(conv)
        if dialog.dialog_type != MAIN:
            return dialog, self.world.survey_bot, AGENT
        conversation = self.world.conversation(dialog.conversation_id)
        agent = conversation.assigned_agent
        if agent is None:
            self.world.assign_agent(conversation)
        elif agent.state == "SUGGESTED":
            self.world.accept_transfer(conversation)
        agent = conversation.assigned_agent
        assert agent is not None
        return dialog, agent.id, ASSIGNED_AGENT

    @staticmethod
    def _seq(change: Json) -> int:
        return int(change["sequence"])

