"""REST beyond CSDS and signup: the agent public profile (protocol.md §12) and the Consumer
Messaging History API (§12a), on the simulator's one port.

The history serves the truth (`Dialog.events`, withheld events included), so it is the witness
a client reconciles against. Its faults (429/503 every k-th request, partial pages) and the
unknown agents are read from `sim.faults` per request. Errors carry a small JSON body.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from recorder.simulator.checks import BadRequest, counter, state_filter
from recorder.simulator.interface import SimulatorInterface
from recorder.simulator.journal import RestRequest
from recorder.simulator.model import HISTORY_EVENT_TYPES, Conversation, Dialog, Json
from recorder.simulator.tokens import Identity, TokenError, parse_authorization

PROFILE_PATH = "/api/account/{account}/configuration/le-users/users/{agent}"
HISTORY_BASE = "/messaging_history/api/account/{account}/conversations"
CONTENT_PATH = HISTORY_BASE + "/conversation/content/search"
METADATA_PATH = HISTORY_BASE + "/consumer/metadata/search"
#: The history's page size when none is asked for, and the most it serves at once.
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
#: The history takes the websocket's `jwt` scheme and, UNCONFIRMED which, `Bearer` too.
AUTH_SCHEMES = ("jwt", "bearer")
#: The fields of a content record: a stored change minus metadata and client properties.
RECORD_FIELDS = ("sequence", "originatorId", "originatorMetadata", "serverTimestamp", "event",
                 "dialogId", "conversationId")

# Non-ASCII names now and then: a client must store profiles as UTF-8, not as ASCII.
FIRST_NAMES = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farah", "Jörg", "Kenji", "Léa",
               "Mateo", "Nadia", "Omar", "Priya", "Søren", "Zoë", "Łucja", "美咲", "Ivan")
LAST_NAMES = ("Almeida", "Brandt", "Chen", "Dubois", "Eriksen", "García", "Haddad", "Ivanova",
              "Jensen", "Kowalski", "Müller", "Nakamura", "O'Brien", "Patel", "Rossi", "Schmidt")


def agent_profile(seed: int, agent_id: str) -> Json:
    """A public profile drawn from the seed and the agent id alone: stable across runs."""
    rng = random.Random(f"{seed}:profile:{agent_id}")
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {
        "id": agent_id,
        "nickname": first,
        "fullName": f"{first} {last}",
        # `.invalid` never resolves: nothing leaves the machine if a client fetches it.
        "pictureUrl": f"https://cdn.simulator.invalid/le_users/{agent_id}.png",
        "employeeId": f"E{rng.randint(100000, 999999)}",
    }


@dataclasses.dataclass
class _Call:
    """One REST request as the journal records it; the key is filled in once known."""

    endpoint: str
    key: str | None = None


class RestApi:
    def __init__(self, sim: SimulatorInterface) -> None:
        self.sim = sim

    def register(self, app: web.Application) -> None:
        app.router.add_get(PROFILE_PATH, self._profile)
        app.router.add_get(CONTENT_PATH, self._content_get)
        app.router.add_post(CONTENT_PATH, self._content_post)  # the older, dialogId form
        app.router.add_post(METADATA_PATH, self._metadata)

    # -- endpoints -------------------------------------------------------------------------------

    async def _profile(self, request: web.Request) -> web.Response:
        agent = request.match_info["agent"]

        def answer() -> Json:
            self._check_account(request)  # and no auth: the documented call carries none
            profile = self.sim.agent_profile(agent)
            if profile is None:
                raise BadRequest(f"user {agent} not found", 404)
            return profile

        return self._serve(_Call("profile", agent), answer)

    async def _content_get(self, request: web.Request) -> web.Response:
        call = _Call("history_content", request.query.get("conversationId"))

        def answer() -> Json:
            identity = self._authorize(request)
            if not call.key:
                raise BadRequest("conversationId is required")
            return self._content(request, self._owned(identity, call.key).dialogs)

        return self._serve(call, answer)

    async def _content_post(self, request: web.Request) -> web.Response:
        raw = await request.read()
        call = _Call("history_content")

        def answer() -> Json:
            identity = self._authorize(request)
            body = _json_object(raw)
            dialog_id, conv_id = body.get("dialogId"), body.get("conversationId")
            if isinstance(dialog_id, str) and dialog_id:
                call.key = dialog_id
                dialog = self.sim.world.dialogs.get(dialog_id)
                if dialog is None:
                    raise BadRequest(f"dialog {dialog_id} not found", 404)
                self._owned(identity, dialog.conversation_id)
                return self._content(request, [dialog])
            if isinstance(conv_id, str) and conv_id:
                call.key = conv_id
                return self._content(request, self._owned(identity, conv_id).dialogs)
            raise BadRequest("dialogId is required")

        return self._serve(call, answer)

    async def _metadata(self, request: web.Request) -> web.Response:
        raw = await request.read()
        call = _Call("history_metadata")

        def answer() -> Json:
            identity = self._authorize(request)
            call.key = identity.sub
            states = state_filter(_json_object(raw).get("state"), "state")
            offset, limit = _paging(request)
            world = self.sim.world
            matching = [world.conversations[c] for c in world.by_consumer.get(identity.sub, [])]
            matching = [conv for conv in matching if conv.state in states]
            if _descending(request, "start:desc"):
                matching.reverse()  # by_consumer is in creation order, which is start order
            page = [_metadata_record(conv) for conv in matching[offset : offset + limit]]
            return {
                "_metadata": _page_metadata(request, len(matching), offset, limit),
                "conversationHistoryMetadataRecords": page,
            }

        return self._serve(call, answer)

    # -- helpers ---------------------------------------------------------------------------------

    def _serve(self, call: _Call, answer: Callable[[], Json]) -> web.Response:
        """Throttle, answer, journal: the same steps for every profile and history request."""
        throttled = self._throttle()
        if throttled is not None:
            status, body = throttled, _error(throttled, _THROTTLE_TEXT[throttled])
        else:
            try:
                status, body = 200, answer()
            except BadRequest as exc:
                status, body = exc.code, _error(exc.code, str(exc))
        if self.sim.keep_journal:
            self.sim.rest_requests.append(RestRequest(
                call.endpoint, call.key, status, time.monotonic()))
        return web.json_response(body, status=status, dumps=_dumps)

    def _throttle(self) -> int | None:
        # One counter for profiles and history, apart from the websocket's request counter.
        self.sim.rest_request_count += 1
        n, faults = self.sim.rest_request_count, self.sim.faults
        if faults.rest_reject_every and n % faults.rest_reject_every == 0:
            return 429
        if faults.rest_server_error_every and n % faults.rest_server_error_every == 0:
            return 503
        return None

    def _check_account(self, request: web.Request) -> None:
        if request.match_info["account"] != self.sim.account:
            raise BadRequest("unknown account", 404)

    def _authorize(self, request: web.Request) -> Identity:
        self._check_account(request)
        token = parse_authorization(request.headers.get("Authorization", ""), AUTH_SCHEMES)
        if token is None:
            raise BadRequest("Authorization must be 'jwt <token>' or 'Bearer <token>'", 401)
        try:
            return self.sim.tokens.verify(token)
        except TokenError as exc:
            raise BadRequest(str(exc), 401) from exc

    def _owned(self, identity: Identity, conv_id: str) -> Conversation:
        # Another consumer's conversation is as unknown as one that never existed.
        conv = self.sim.world.conversations.get(conv_id)
        if conv is None or conv.consumer != identity.sub:
            raise BadRequest(f"conversation {conv_id} not found", 404)
        return conv

    def _content(self, request: web.Request, dialogs: list[Dialog]) -> Json:
        offset, limit = _paging(request)
        events = [e for d in dialogs for e in d.events
                  if e["event"].get("type") in HISTORY_EVENT_TYPES]
        if _descending(request, "start:asc"):
            events.reverse()
        page = self._partial([_record(e) for e in events[offset : offset + limit]])
        return {
            "_metadata": _page_metadata(request, len(events), offset, limit),
            "messageEventRecords": page,
        }

    def _partial(self, page: list[Json]) -> list[Json]:
        """The partial-page fault: some records go missing, `count` still tells the truth."""
        probability, rng = self.sim.faults.history_partial_probability, self.sim.fault_rng
        if len(page) < 2 or probability <= 0 or rng.random() >= probability:
            return page
        dropped = set(rng.sample(range(len(page)), rng.randint(1, len(page) - 1)))
        return [record for i, record in enumerate(page) if i not in dropped]


_THROTTLE_TEXT = {429: "Too many requests", 503: "Service unavailable, please retry"}


def _error(status: int, message: str) -> Json:
    return {"code": status, "message": message}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_object(raw: bytes) -> Json:
    """The request body as an object; an empty body is an empty object."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _paging(request: web.Request) -> tuple[int, int]:
    offset = counter(request.query.get("offset", "0"), "offset")
    limit = counter(request.query.get("limit", str(DEFAULT_LIMIT)), "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return offset, limit


def _descending(request: web.Request, default: str) -> bool:
    field, _, direction = request.query.get("sort", default).partition(":")
    if not field or direction not in ("asc", "desc"):
        raise BadRequest("sort must be <field>:asc or <field>:desc")
    return direction == "desc"


def _page_metadata(request: web.Request, total: int, offset: int, limit: int) -> Json:
    def link(rel: str, at: int) -> Json:
        return {"rel": rel, "href": str(request.url.update_query(offset=at, limit=limit))}

    out: Json = {"count": total, "self": {"rel": "self", "href": str(request.url)}}
    if offset > 0:
        out["prev"] = link("prev", max(0, offset - limit))
    if offset + limit < total:
        out["next"] = link("next", offset + limit)
    return out


def _record(change: Json) -> Json:
    """A history record: a deep copy of the stored change's record fields, nothing else."""
    return {key: copy.deepcopy(change[key]) for key in RECORD_FIELDS}


def _metadata_record(conv: Conversation) -> Json:
    out: Json = {
        "conversationId": conv.conv_id,
        "state": conv.state,
        "stage": conv.stage,
        "startTs": conv.start_ts,
    }
    if conv.end_ts is not None:
        out["endTs"] = conv.end_ts
    out["brandId"] = conv.brand_id
    out["dialogs"] = [
        {"dialogId": d.dialog_id, "dialogType": d.dialog_type, "state": d.state}
        for d in conv.dialogs
    ]
    return out
