"""`SimulatorInterface`: the part of `Simulator` its helpers (server, connection, requests,
script, traffic) use, as a protocol.

`core.Simulator` builds those helpers and hands itself to them; they type it with this protocol
rather than importing `core`, so the modules do not import each other in a cycle. `Simulator`
satisfies the protocol structurally (mypy checks it where `core` passes `self` to a helper).
"""

from __future__ import annotations

import random
from typing import Protocol

from recorder.simulator.faults import Faults
from recorder.simulator.filestore import FileStore
from recorder.simulator.journal import CloseRecord, ReceivedFrame, RestRequest, SentFrame
from recorder.simulator.model import Clock, Dialog, Json
from recorder.simulator.tokens import TokenIssuer
from recorder.simulator.world import World


class ScriptReactions(Protocol):
    """What requests tell the scripted agents (`script.Script`, which itself takes a
    `SimulatorInterface`, so it cannot be named here without a cycle)."""

    def consumer_published(self, dialog: Dialog, change: Json) -> None: ...


class SimulatorInterface(Protocol):
    # -- settings --------------------------------------------------------------------------------

    account: str
    seed: int
    default_skill: str
    auto_reply: bool
    reply_delay_s: float
    survey_enabled: bool
    csds_list_shape: bool
    init_timeout_s: float
    signup_ttl_s: float
    keep_journal: bool
    faults: Faults
    fault_rng: random.Random

    # -- state and parts -------------------------------------------------------------------------

    clock: Clock
    journal: list[SentFrame]
    received: list[ReceivedFrame]
    closes: list[CloseRecord]
    request_count: int
    rest_requests: list[RestRequest]
    rest_request_count: int
    tokens: TokenIssuer
    files: FileStore
    world: World

    @property
    def script(self) -> ScriptReactions: ...

    # -- identities ------------------------------------------------------------------------------

    def issue_token(
        self, sub: str | None = None, ttl_s: float = 3600.0, unauthenticated: bool = False
    ) -> str: ...

    def new_subscription_id(self) -> str: ...

    def agent_profile(self, agent_id: str) -> Json | None: ...

    # -- conversations ---------------------------------------------------------------------------

    def create_conversation(self, consumer: str, skill_id: str | None = None) -> str: ...

    def assign_agent(self, conv: str, agent: str | None = None) -> str: ...

    def transfer_to_skill(self, conv: str, skill_id: str) -> None: ...

    def transfer_to_agent(self, conv: str, agent: str | None = None) -> str: ...

    def accept_transfer(self, conv: str) -> None: ...

    def set_ttr(self, conv: str, ttr_type: str, value: int) -> None: ...

    def close_conversation(
        self, conv: str, by: str = "AGENT", *, survey: bool | None = None,
        cause: str | None = None,
    ) -> str | None: ...

    def set_csat(
        self, conv: str, rate: int, *, resolved: bool = True, status: str = "FILLED"
    ) -> None: ...

    def survey_question(self, dialog: str) -> int: ...

    def survey_answer(self, dialog: str, reply: int = 0) -> int: ...

    def complete_survey(self, conv: str) -> None: ...

    # -- messaging events ------------------------------------------------------------------------

    def consumer_message(
        self, conv: str, text: str, *, metadata: list[Json] | None = None
    ) -> int: ...

    def consumer_receipt(
        self, conv: str, sequences: list[int], status: str = "ACCEPT"
    ) -> int: ...

    def consumer_file(
        self, conv: str, caption: str = "Screenshot", file_type: str = "PNG"
    ) -> int: ...

    def consumer_typing(self, conv: str, state: str = "COMPOSING") -> None: ...

    def agent_message(self, conv: str, text: str, *, metadata: list[Json] | None = None) -> int: ...

    def agent_rich_content(self, conv: str, content: Json | None = None) -> int: ...

    def agent_read(self, conv: str, sequences: list[int]) -> int: ...

    def agent_typing(self, conv: str, state: str = "COMPOSING") -> None: ...
