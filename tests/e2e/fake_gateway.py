"""The fake gateway: HELLO, IDENTIFY -> READY + GUILD_CREATE, heartbeats, RESUME with replay, dispatch.

discord.py connects to ``DEFAULT_GATEWAY`` with ``?v=10&encoding=json&compress=zlib-stream`` and
accepts both plain text frames and one zlib stream flushed per message; we answer with what it
asked for, like Discord does, so its real decompressor is exercised. Closing codes follow
Discord's: 4004 bad token, 4005 identified twice, 4010 invalid shard, 4014 privileged intent not
enabled.

Sharding is Discord's too: a session that IDENTIFYs with ``shard: [shard_id, num_shards]`` gets
READY, GUILD_CREATE and every other event only for the guilds with
``(guild_id >> 22) % num_shards == shard_id``, and events outside any guild on shard 0; a session
without ``shard`` gets everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import secrets
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.e2e.call_log import EventLog, GatewayFrame
from tests.e2e.fake_models import JSON, shard_of
from tests.e2e.fake_state import PRIVILEGED_INTENTS, DiscordState

_log = logging.getLogger(__name__)

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1  # privileged
INTENT_GUILD_PRESENCES = 1 << 8  # privileged
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_MESSAGE_CONTENT = 1 << 15  # privileged
_BACKLOG = 1000  # dispatches kept per session for RESUME


def _now() -> float:
    return asyncio.get_running_loop().time()


def _session_id(session: GatewaySession | None) -> str | None:
    return None if session is None else session.session_id


def _guild_of(event: str, data: JSON) -> int | None:
    """The guild an event is about: its ``guild_id``, or ``id`` for the guild's own events; None outside guilds."""
    if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"):
        return int(data["id"])
    guild_id = data.get("guild_id")
    return None if guild_id is None else int(guild_id)


class _Connection:
    """One websocket and the compression its client negotiated in the query string."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None) -> None:
        self.ws = ws
        self.server_closed = False
        self.compress = compress if compress == "zlib-stream" else None
        self._zlib = zlib.compressobj() if self.compress else None
        self._lock = asyncio.Lock()  # the zlib stream is one context: frames must go out in order

    async def send(self, payload: JSON) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                if self._zlib is not None:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(text)

    async def close(self, code: int, message: str) -> None:
        self.server_closed = True
        await self.ws.close(code=code, message=message.encode())


@dataclass
class GatewaySession:
    """A gateway session: survives a dropped connection until the client RESUMEs it."""

    session_id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    backlog: list[JSON] = field(default_factory=list)
    connection: _Connection | None = None

    def carries(self, guild_id: int | None) -> bool:
        """Whether this session's shard gets the events of ``guild_id`` (None: events outside guilds)."""
        if self.shard is None:
            return True
        shard_id, num_shards = self.shard
        return shard_id == (0 if guild_id is None else shard_of(guild_id, num_shards))


class FakeGateway:
    """Serves the gateway websocket for one :class:`DiscordState`.

    Args:
        state: what READY and GUILD_CREATE describe.
        frames: where every payload in both directions is recorded.
        heartbeat_interval_ms: sent in HELLO.
    """

    def __init__(
        self,
        state: DiscordState,
        frames: EventLog[GatewayFrame],
        *,
        heartbeat_interval_ms: int,
    ) -> None:
        self._state = state
        self._frames = frames
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._connections: set[_Connection] = set()
        self.sessions: dict[str, GatewaySession] = {}
        self.url = ""

    # -- connection lifecycle ----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws, request.query.get("compress"))
        self._connections.add(conn)
        session: GatewaySession | None = None
        try:
            if request.query.get("encoding", "json") != "json":
                await conn.close(4002, "Error while decoding payload.")
                return ws
            await self._send(conn, None, {"op": 10, "d": {"heartbeat_interval": self._heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await conn.close(4002, "Error while decoding payload.")
                    break
                session = await self._receive(conn, session, json.loads(msg.data))
        finally:
            self._connections.discard(conn)
            if session is not None and session.connection is conn:
                session.connection = None
                # A client that closes with 1000/1001 ends its session; anything else may RESUME.
                if not conn.server_closed and ws.close_code in (1000, 1001):
                    self.sessions.pop(session.session_id, None)
            closed = GatewayFrame("closed", ws.close_code or 0, None, session_id=_session_id(session), at=_now())
            self._frames.append(closed)
        return ws

    async def close(self) -> None:
        """Close every connection with 1001 (going away), as Discord does when a node restarts."""
        for conn in list(self._connections):
            await conn.close(1001, "Going away")

    # -- control, for tests ------------------------------------------------------------------

    async def dispatch(self, event: str, data: JSON, *, intent: int | None = None) -> None:
        """Send a DISPATCH to every session whose shard carries the event's guild (and that asked for ``intent``)."""
        guild_id = _guild_of(event, data)
        for session in list(self.sessions.values()):
            if session.carries(guild_id) and (intent is None or session.intents & intent):
                await self._dispatch_to(session, event, data)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs at ``resume_gateway_url``."""
        for conn in list(self._connections):
            await self._send(conn, None, {"op": 7, "d": None})

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every connection from the server side; sessions stay resumable."""
        for conn in list(self._connections):
            await conn.close(code, "Unknown error.")

    # -- protocol ----------------------------------------------------------------------------

    async def _receive(self, conn: _Connection, session: GatewaySession | None, payload: JSON) -> GatewaySession | None:
        op: Any = payload.get("op")
        d: Any = payload.get("d")
        self._frames.append(GatewayFrame("recv", op, d, session_id=_session_id(session), at=_now()))
        if op == 1:
            await self._send(conn, session, {"op": 11, "d": None})
        elif op == 2:
            return await self._identify(conn, session, d)
        elif op == 6:
            return await self._resume(conn, d)
        elif op == 8 and session is not None:
            await self._request_members(session, d)
        elif op not in (3, 4):  # presence and voice state updates are accepted and ignored
            await conn.close(4001, "Unknown opcode.")
        return session

    async def _identify(self, conn: _Connection, session: GatewaySession | None, d: JSON) -> GatewaySession | None:
        if session is not None:
            await conn.close(4005, "Already authenticated.")
            return session
        if d.get("token") != self._state.token:
            await conn.close(4004, "Authentication failed.")
            return None
        intents = int(d.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self._state.privileged_intents:
            await conn.close(4014, "Disallowed intent(s).")
            return None
        shard = d.get("shard")
        if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
            await conn.close(4010, "Invalid shard.")
            return None
        session = GatewaySession(secrets.token_hex(16), intents, shard, connection=conn)
        self.sessions[session.session_id] = session
        await self._dispatch_to(session, "READY", self._ready_payload(session))
        if intents & INTENT_GUILDS:
            for guild_id in [g for g in self._state.guilds if session.carries(g)]:
                await self._dispatch_to(session, "GUILD_CREATE", self.guild_create_payload(guild_id, intents))
        return session

    async def _resume(self, conn: _Connection, d: JSON) -> GatewaySession | None:
        session = self.sessions.get(d.get("session_id", ""))
        if session is None or d.get("token") != self._state.token:
            await self._send(conn, None, {"op": 9, "d": False})
            return None
        previous, session.connection = session.connection, conn
        if previous is not None:
            # The client may RESUME before we noticed its old socket close; the new one wins.
            await previous.close(4000, "Session resumed elsewhere.")
        last_seen = d.get("seq") or 0
        for payload in session.backlog:
            if payload["s"] > last_seen:
                await self._send(conn, session, payload)
        await self._dispatch_to(session, "RESUMED", {})
        return session

    async def _request_members(self, session: GatewaySession, d: JSON) -> None:
        guild = self._state.guild(int(d["guild_id"]))
        wanted = {int(u) for u in d.get("user_ids") or []}
        members = [m for m in guild.members.values() if not wanted or m.id in wanted]
        if not wanted and not session.intents & INTENT_GUILD_MEMBERS:
            members = []  # listing members needs the privileged intent
        chunk = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members[: d.get("limit") or None]],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(u) for u in wanted - {m.id for m in members}],
        }
        if "nonce" in d:
            chunk["nonce"] = d["nonce"]
        await self._dispatch_to(session, "GUILD_MEMBERS_CHUNK", chunk)

    def guild_create_payload(self, guild_id: int, intents: int) -> JSON:
        """GUILD_CREATE as a session with these intents sees it: without GUILD_MEMBERS only the bot itself."""
        payload = self._state.guild(guild_id).to_gateway_payload()
        if not intents & INTENT_GUILD_MEMBERS:
            bot_id = str(self._state.bot_user.id)
            payload["members"] = [m for m in payload["members"] if m["user"]["id"] == bot_id]
        return payload

    def _ready_payload(self, session: GatewaySession) -> JSON:
        user = self._state.bot_user.to_payload() | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None}
        payload: JSON = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(g), "unavailable": True} for g in self._state.guilds if session.carries(g)],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "application": {"id": str(self._state.application_id), "flags": self._state.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "user_settings": {},
            "_trace": ['["fake-discord-gateway",{"micros":0}]'],
        }
        if session.shard is not None:
            payload["shard"] = session.shard
        return payload

    async def _dispatch_to(self, session: GatewaySession, event: str, data: JSON) -> None:
        session.seq += 1
        # A copy: the store keeps mutating its objects (edits), a replay must send what was sent.
        payload = {"op": 0, "t": event, "s": session.seq, "d": copy.deepcopy(data)}
        session.backlog.append(payload)
        del session.backlog[:-_BACKLOG]
        if session.connection is not None:
            await self._send(session.connection, session, payload)

    async def _send(self, conn: _Connection, session: GatewaySession | None, payload: JSON) -> None:
        self._frames.append(
            GatewayFrame(
                "send",
                payload["op"],
                payload.get("d"),
                t=payload.get("t"),
                s=payload.get("s"),
                session_id=_session_id(session),
                at=_now(),
            )
        )
        await conn.send(payload)
