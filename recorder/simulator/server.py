"""The simulator's HTTP side, on one real port: UMS websocket, CSDS, IdP signup, file storage
(agent profiles and the Messaging History are in `rest.py`, on the same app).

`Hub` keeps the open connections and turns each model change into frames per connection:
an ExConversation UPSERT/DELETE per matching subscription (rendered for that connection's
features) and a messaging notification per socket subscribed to the dialog.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

import orjson
from aiohttp import WSMsgType, web

from recorder.logs import event
from recorder.simulator import wire
from recorder.simulator.connection import Connection
from recorder.simulator.faults import Faults
from recorder.simulator.interface import SimulatorInterface
from recorder.simulator.model import Conversation, Dialog, Json
from recorder.simulator.requests import handle_text
from recorder.simulator.rest import RestApi
from recorder.simulator.tokens import Identity, TokenError, parse_authorization

log = logging.getLogger(__name__)

WS_PATH = "/ws_api/account/{account}/messaging/consumer"
CSDS_PATH = "/api/account/{account}/service/{service}/baseURI.json"
SIGNUP_PATH = "/api/account/{account}/signup"
FILES_PATH = "/v1/{path:.*}"
#: `swift` (object storage) is UNCONFIRMED as a CSDS name; served so file downloads can work.
#: `acCdnDomain` (agent profiles) and `msgHist` (Messaging History) point here too.
CSDS_SERVICES = frozenset({"asyncMessagingEnt", "idp", "swift", "acCdnDomain", "msgHist"})
#: A 1x1 PNG, returned for files nobody uploaded (e.g. ones an agent "shared").
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class Hub:
    def __init__(self, faults: Callable[[], Faults] | None = None) -> None:
        self.connections: dict[int, Connection] = {}
        self._next_id = 1
        self._faults = faults  # a getter: tests replace `sim.faults` wholesale

    def new_id(self) -> int:
        conn_id, self._next_id = self._next_id, self._next_id + 1
        return conn_id

    def of_consumer(self, consumer: str) -> list[Connection]:
        return [c for c in self.connections.values() if c.consumer == consumer and not c.closed]

    def conversation_changed(self, conv: Conversation) -> None:
        if self._faults is not None and conv.conv_id in self._faults().hidden_conversations:
            return  # never reported on the socket: only the history lists it
        for conn in self.of_consumer(conv.consumer):
            for sub in list(conn.ex_subscriptions.values()):
                if conv.matches(sub.conv_states, sub.stages, sub.min_ts):
                    change_type = "UPSERT"
                    sub.visible.add(conv.conv_id)
                elif conv.conv_id in sub.visible:
                    change_type = "DELETE"  # it left the subscription's filter
                    sub.visible.discard(conv.conv_id)
                else:
                    continue
                change = {"type": change_type, "result": conv.result(conn.multi_dialog)}
                frame = wire.ex_conversation_notification(sub.subscription_id, [change])
                conn.send(frame, conv_key=conv.conv_id, upsert=change_type == "UPSERT")

    def event_added(self, conv: Conversation, dialog: Dialog, change: Json, stored: bool) -> None:
        if stored and change["sequence"] in dialog.withheld:
            return  # withheld: only the history shows it until it is released
        self.push_events(conv, dialog, [change])

    def push_events(self, conv: Conversation, dialog: Dialog, changes: list[Json]) -> None:
        """Live messaging notifications (batched) to every socket subscribed to the dialog."""
        frames = [wire.messaging_notification(batch) for batch in wire.batches(changes)]
        for conn in self.of_consumer(conv.consumer):
            if dialog.dialog_id in conn.dialog_subscriptions:
                for frame in frames:
                    conn.send(frame)


class SimServer:
    def __init__(self, sim: SimulatorInterface) -> None:
        self.sim = sim
        self.hub = Hub(lambda: sim.faults)
        self.app = web.Application()
        self.app.router.add_get(WS_PATH, self._websocket)
        self.app.router.add_get(CSDS_PATH, self._csds)
        self.app.router.add_post(SIGNUP_PATH, self._signup)
        self.app.router.add_route("GET", FILES_PATH, self._file)
        self.app.router.add_route("PUT", FILES_PATH, self._file)
        RestApi(sim).register(self.app)
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self.host, self.port = host, int(runner.addresses[0][1])
        log.info("simulator listening on %s:%s", self.host, self.port,
                 extra=event("simulator.server.listening"))

    async def stop(self) -> None:
        connections = list(self.hub.connections.values())
        await asyncio.gather(
            *(c.close(1001, "simulator shutting down") for c in connections),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- UMS websocket ---------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        if request.match_info["account"] != sim.account:
            raise web.HTTPNotFound(text="unknown account")
        if request.query.get("v") != "3":
            raise web.HTTPBadRequest(text="unsupported or missing API version: use v=3")
        identity: Identity | None = None
        header = request.headers.get("Authorization")
        if header is not None:
            token = parse_authorization(header)
            if token is None:
                raise web.HTTPUnauthorized(text="Authorization must be 'jwt <token>'")
            try:
                identity = sim.tokens.verify(token)
            except TokenError as exc:
                # Answered on the upgrade itself: no websocket is opened.
                raise web.HTTPUnauthorized(text=str(exc)) from exc
        ws = web.WebSocketResponse(timeout=2.0, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(sim, self.hub.new_id(), ws, request.transport)
        properties = request.headers.get("Client-Properties")
        if properties:
            self._header_properties(conn, properties)
        if identity is not None:
            conn.authenticate(identity)
        else:
            conn.spawn(self._require_init(conn))
        self.hub.connections[conn.id] = conn
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await handle_text(sim, conn, message.data)
                else:
                    log.warning("connection %s: ignoring a %s frame", conn.id, message.type.name,
                                extra=event("simulator.frame.ignored"))
        finally:
            self.hub.connections.pop(conn.id, None)
            await conn.shutdown()
        return ws

    @staticmethod
    def _header_properties(conn: Connection, raw: str) -> None:
        try:
            properties = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("connection %s: Client-Properties is not JSON; ignored", conn.id,
                        extra=event("simulator.client_properties.invalid"))
            return
        if isinstance(properties, dict):
            conn.set_client_properties(properties)

    async def _require_init(self, conn: Connection) -> None:
        # A header-less socket must authenticate with InitConnection within the grace period.
        await asyncio.sleep(self.sim.init_timeout_s)
        if conn.identity is None:
            await conn.close(4401, "InitConnection not received")

    # -- REST ------------------------------------------------------------------------------------

    async def _csds(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        service = request.match_info["service"]
        if account != self.sim.account or service not in CSDS_SERVICES:
            raise web.HTTPNotFound(text="unknown account or service")
        host = request.host if self.host in ("0.0.0.0", "::", "") else f"{self.host}:{self.port}"
        entry = {"service": service, "account": account, "baseURI": host}
        return web.json_response({"baseURIs": [entry]} if self.sim.csds_list_shape else entry)

    async def _signup(self, request: web.Request) -> web.Response:
        if request.match_info["account"] != self.sim.account:
            raise web.HTTPNotFound(text="unknown account")
        token = self.sim.issue_token(ttl_s=self.sim.signup_ttl_s, unauthenticated=True)
        return web.json_response({"jwt": token})

    async def _file(self, request: web.Request) -> web.Response:
        files = self.sim.files
        sig = request.query.get("temp_url_sig", "")
        expires = request.query.get("temp_url_expires", "")
        if not files.check(request.path, sig, expires):
            raise web.HTTPUnauthorized(text="temp URL invalid or expired")
        if request.method == "PUT":
            files.data[request.path] = await request.read()
            return web.Response(status=201)
        body = files.data.get(request.path, TINY_PNG)
        return web.Response(body=body, content_type="application/octet-stream")

