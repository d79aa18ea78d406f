"""The fake REST API: a router that parses and records every request, and the plain routes.

Every request (known route or not) becomes a :class:`~tests.e2e.call_log.Call`. Errors are
Discord's: ``{"message", "code"}`` JSON with the real status and code; an uploaded file over the
attachment size limit is ``413 40005 Request entity too large`` on every route. The JSON content type is
exactly ``application/json`` without a charset: discord.py's ``json_or_text`` compares the header
with ``==`` and would hand a ``str`` to the library otherwise.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from tests.e2e.call_log import Call, EventLog
from tests.e2e.fake_gateway import INTENT_GUILD_MESSAGES, FakeGateway
from tests.e2e.fake_models import JSON, Permission
from tests.e2e.fake_state import EPHEMERAL, DiscordError, DiscordState, Upload, entity_too_large, unknown

API_PREFIX = "/api/v10"


@dataclass(frozen=True)
class RestRequest:
    """A parsed request: route parameters, query, JSON (or ``payload_json``) and uploaded files."""

    method: str
    path: str
    params: Mapping[str, str]
    query: Mapping[str, str]
    json: Any
    uploads: list[Upload] = field(default_factory=list)

    def snowflake(self, name: str) -> int:
        value = self.params[name]
        if not value.isdigit():
            raise DiscordError(400, 50035, f'Value "{value}" is not snowflake.')
        return int(value)

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true")


@dataclass(frozen=True)
class Reply:
    """What a route answers: JSON (``body``; None means 204) or raw bytes for the CDN."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"

    def to_response(self) -> web.Response:
        if self.raw is not None:
            return web.Response(status=self.status, body=self.raw, headers={"Content-Type": self.content_type})
        if self.body is None:
            return web.Response(status=204 if self.status == 200 else self.status)
        body = json.dumps(self.body).encode()
        return web.Response(status=self.status, body=body, headers={"Content-Type": "application/json"})


Handler = Callable[[RestRequest], Awaitable[Reply]]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool


class Router:
    """Matches ``(method, path)`` against templates such as ``/channels/{channel_id}/messages``."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
        self._routes.append(_Route(method, re.compile(regex), handler, auth))

    def match(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        for route in self._routes:
            found = route.pattern.fullmatch(path)
            if found and route.method == method:
                return route, found.groupdict()
        return None


class MessageEvents:
    """Sends MESSAGE_CREATE/UPDATE/DELETE for non-ephemeral messages, as Discord does for the bot's own."""

    def __init__(self, state: DiscordState, gateway: FakeGateway, *, enabled: bool) -> None:
        self._state = state
        self._gateway = gateway
        self._enabled = enabled

    async def emit(self, event: str, message: JSON) -> None:
        if not self._enabled or message["flags"] & EPHEMERAL:
            return
        channel = self._state.channel(int(message["channel_id"]))
        if event == "MESSAGE_DELETE":
            data = {"id": message["id"], "channel_id": message["channel_id"], "guild_id": str(channel.guild_id)}
        else:
            member = self._state.guild_member(channel.guild_id, self._state.bot_user.id).to_payload()
            del member["user"]
            data = {**message, "guild_id": str(channel.guild_id), "member": member}
        await self._gateway.dispatch(event, data, intent=INTENT_GUILD_MESSAGES)


class RestServer:
    """Parses, routes and records REST requests.

    Args:
        state: the store the routes read and write.
        calls: where every request is recorded.
    """

    def __init__(self, state: DiscordState, calls: EventLog[Call]) -> None:
        self._state = state
        self._calls = calls
        self.router = Router()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received_at = asyncio.get_running_loop().time()
        path = request.path.removeprefix(API_PREFIX) if request.path.startswith(API_PREFIX + "/") else request.path
        body, uploads = await _read_body(request)
        matched = self.router.match(request.method, path)
        if matched is None:
            reply = Reply(404, {"message": "404: Not Found", "code": 0})
        else:
            route, params = matched
            rest_request = RestRequest(request.method, path, params, dict(request.query), body, uploads)
            reply = await self._run(route, rest_request, request.headers.get("Authorization"))
        self._calls.append(
            Call(
                method=request.method,
                path=path,
                query=dict(request.query),
                json=copy.deepcopy(body),
                files={u.filename: u.data for u in uploads},
                status=reply.status,
                response=None if reply.raw is not None else copy.deepcopy(reply.body),
                received_at=received_at,
                unknown=matched is None,
            )
        )
        return reply.to_response()

    async def _run(self, route: _Route, request: RestRequest, authorization: str | None) -> Reply:
        if route.auth and authorization != f"Bot {self._state.token}":
            return Reply(401, {"message": "401: Unauthorized", "code": 0})
        try:
            if any(len(u.data) > self._state.attachment_size_limit for u in request.uploads):
                raise entity_too_large()  # before the route: nothing of the request happens
            return await route.handler(request)
        except DiscordError as exc:
            return Reply(exc.status, exc.to_payload())


async def _read_body(request: web.Request) -> tuple[Any, list[Upload]]:
    """JSON bodies as they are; multipart bodies as ``payload_json`` plus ``files[n]`` uploads."""
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        uploads = []
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            if part.name == "payload_json":
                payload = json.loads(data)
            elif part.filename is not None:
                uploads.append(
                    Upload(part.name or "", part.filename, part.headers.get("Content-Type", ""), bytes(data))
                )
        return payload, uploads
    if request.can_read_body:
        raw = await request.read()
        return (json.loads(raw) if raw else None), []
    return None, []


class PlainRoutes:
    """Login, application info, users, guilds, channels, channel messages and the attachment CDN."""

    def __init__(self, state: DiscordState, events: MessageEvents, gateway_url: Callable[[], str]) -> None:
        self._state = state
        self._events = events
        self._gateway_url = gateway_url

    def register(self, router: Router) -> None:
        router.add("GET", "/gateway", self.get_gateway, auth=False)
        router.add("GET", "/gateway/bot", self.get_gateway_bot)
        router.add("GET", "/users/@me", self.get_me)
        router.add("GET", "/users/{user_id}", self.get_user)
        router.add("GET", "/oauth2/applications/@me", self.get_application)
        router.add("GET", "/applications/@me", self.get_application)
        router.add("GET", "/guilds/{guild_id}", self.get_guild)
        router.add("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)
        router.add("GET", "/channels/{channel_id}", self.get_channel)
        router.add("POST", "/channels/{channel_id}/messages", self.create_message)
        router.add("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        router.add("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        router.add("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        router.add("GET", "/attachments/{channel_id}/{attachment_id}/{filename}", self.get_attachment, auth=False)

    async def get_gateway(self, request: RestRequest) -> Reply:
        return Reply(body={"url": self._gateway_url()})

    async def get_gateway_bot(self, request: RestRequest) -> Reply:
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        shards = self._state.recommended_shards
        return Reply(body={"url": self._gateway_url(), "shards": shards, "session_start_limit": limit})

    async def get_me(self, request: RestRequest) -> Reply:
        me = self._state.bot_user.to_payload()
        return Reply(body=me | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None, "locale": "en-US"})

    async def get_user(self, request: RestRequest) -> Reply:
        user = self._state.users.get(request.snowflake("user_id"))
        if user is None:
            raise unknown("User", 10013)
        return Reply(body=user.to_payload())

    async def get_application(self, request: RestRequest) -> Reply:
        state = self._state
        return Reply(
            body={
                "id": str(state.application_id),
                "name": state.bot_user.username,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot": state.bot_user.to_payload(),
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": state.app_owner.to_payload(),
                "team": None,
                "flags": state.application_flags,
                "tags": [],
                "redirect_uris": [],
                "rpc_origins": [],
                # Must stay None: with an endpoint URL, Discord would not send interactions over the gateway.
                "interactions_endpoint_url": None,
                "approximate_guild_count": len(state.guilds),
                "integration_types_config": {"0": {}},
            }
        )

    async def get_guild(self, request: RestRequest) -> Reply:
        return Reply(body=self._state.guild(request.snowflake("guild_id")).to_payload())

    async def get_member(self, request: RestRequest) -> Reply:
        member = self._state.guild_member(request.snowflake("guild_id"), request.snowflake("user_id"))
        return Reply(body=member.to_payload())

    async def get_channel(self, request: RestRequest) -> Reply:
        return Reply(body=self._state.channel(request.snowflake("channel_id")).to_payload())

    async def create_message(self, request: RestRequest) -> Reply:
        channel = self._state.channel(request.snowflake("channel_id"))
        payload = request.json or {}
        needed = Permission.VIEW_CHANNEL | Permission.SEND_MESSAGES
        if request.uploads:
            needed |= Permission.ATTACH_FILES
        self._require(channel.guild_id, needed)
        if not (payload.get("content") or payload.get("embeds") or payload.get("components") or request.uploads):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        message_type = 19 if payload.get("message_reference") else 0
        message = self._state.create_message(channel.id, payload, request.uploads, message_type=message_type)
        if "message_reference" in payload:
            message["message_reference"] = payload["message_reference"]
        await self._events.emit("MESSAGE_CREATE", message)
        return Reply(body=message)

    async def get_message(self, request: RestRequest) -> Reply:
        return Reply(body=self._channel_message(request))

    async def edit_message(self, request: RestRequest) -> Reply:
        message = self._channel_message(request)
        if message["author"]["id"] != str(self._state.bot_user.id):
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        message = self._state.edit_message(int(message["id"]), request.json or {}, request.uploads)
        await self._events.emit("MESSAGE_UPDATE", message)
        return Reply(body=message)

    async def delete_message(self, request: RestRequest) -> Reply:
        message = self._channel_message(request)
        if message["author"]["id"] != str(self._state.bot_user.id):
            self._require(self._state.channel(int(message["channel_id"])).guild_id, Permission.MANAGE_MESSAGES)
        self._state.delete_message(int(message["id"]))
        await self._events.emit("MESSAGE_DELETE", message)
        return Reply(204)

    async def get_attachment(self, request: RestRequest) -> Reply:
        stored = self._state.files.get(request.snowflake("attachment_id"))
        if stored is None:
            return Reply(404, raw=b"Not Found", content_type="text/plain")
        _, content_type, data = stored
        return Reply(raw=data, content_type=content_type)

    def _channel_message(self, request: RestRequest) -> JSON:
        channel = self._state.channel(request.snowflake("channel_id"))
        message = self._state.message(request.snowflake("message_id"))
        # Ephemeral messages exist only for their interaction's webhook, never in the channel.
        if message["channel_id"] != str(channel.id) or message["flags"] & EPHEMERAL:
            raise unknown("Message", 10008)
        return message

    def _require(self, guild_id: int, permissions: int) -> None:
        granted = self._state.guild(guild_id).permissions_of(self._state.bot_user.id)
        if granted & permissions != permissions:
            raise DiscordError(403, 50013, "Missing Permissions")
