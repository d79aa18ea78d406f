"""A fake Discord, owned by tests, that the real discord.py client can log in to and be driven by.

One aiohttp server on a loopback port serves both halves: the gateway websocket at ``/`` (any
query) and the REST API under ``/api/v10``. Point discord.py at it with
:func:`tests.e2e.harness.point_discord_at`; then::

    async with FakeDiscord() as server:
        guild = server.add_guild("Test")
        alice = server.add_member(guild.id, name="alice", permissions=Permission.MANAGE_GUILD)
        ...start the bot, sync its tree...
        record = await server.slash(guild.id, guild.text_channels[0].id, alice, "imagine", {"prompt": "a cat"})
        callback = await server.wait_for_response(record)

Everything the bot sends is in ``server.calls``; routes the fake does not know answer 404 and are
listed in ``server.unknown_calls`` so a test can assert there were none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from aiohttp import web

from tests.e2e.call_log import Call, EventLog, GatewayFrame
from tests.e2e.fake_commands import CommandRoutes
from tests.e2e.fake_gateway import FakeGateway, GatewaySession
from tests.e2e.fake_interactions import InteractionBuilder, OptionValue
from tests.e2e.fake_models import DEFAULT_BOT_PERMISSIONS, JSON, FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser
from tests.e2e.fake_rest import API_PREFIX, MessageEvents, PlainRoutes, RestServer
from tests.e2e.fake_state import ATTACHMENT_SIZE_LIMIT, DiscordState, InteractionRecord, InteractionState
from tests.e2e.fake_webhooks import InteractionRoutes

UserRef = FakeMember | FakeUser | int


def _describe_call(call: Call) -> str:
    return f"{call.method} {call.path} -> {call.status}"


def _describe_frame(frame: GatewayFrame) -> str:
    return f"{frame.direction} op={frame.op} t={frame.t} s={frame.s}"


class FakeDiscord:
    """The fake server: state, gateway, REST, recording, and helpers that act as Discord's users.

    Args:
        token: the bot token it accepts (REST ``Authorization: Bot ...`` and IDENTIFY).
        bot_name: the bot user's name.
        privileged_intents: privileged intents "enabled in the developer portal"; others close with 4014.
        heartbeat_interval_ms: announced in HELLO.
        interaction_deadline: seconds the bot has for its first callback (Discord: 3).
        message_events: send MESSAGE_CREATE/UPDATE/DELETE for messages the bot makes.
        attachment_size_limit: bytes per uploaded file (Discord's default: 10 MiB); interactions
            carry it, larger uploads are 413 ``40005 Request entity too large``.
        shards: the shard count ``GET /gateway/bot`` recommends; each shard's session gets its guilds' events.
    """

    def __init__(
        self,
        *,
        token: str = "x.y.z",
        bot_name: str = "imaginebot",
        privileged_intents: int = 0,
        heartbeat_interval_ms: int = 41_250,
        interaction_deadline: float = 3.0,
        message_events: bool = True,
        attachment_size_limit: int = ATTACHMENT_SIZE_LIMIT,
        shards: int = 1,
    ) -> None:
        self.state = DiscordState(token=token, bot_name=bot_name, privileged_intents=privileged_intents,
                                  attachment_size_limit=attachment_size_limit, shards=shards)  # fmt: skip
        self.calls: EventLog[Call] = EventLog(_describe_call)
        self.frames: EventLog[GatewayFrame] = EventLog(_describe_frame)
        self._gateway = FakeGateway(self.state, self.frames, heartbeat_interval_ms=heartbeat_interval_ms)
        self._rest = RestServer(self.state, self.calls)
        events = MessageEvents(self.state, self._gateway, enabled=message_events)
        PlainRoutes(self.state, events, lambda: self.gateway_url).register(self._rest.router)
        CommandRoutes(self.state).register(self._rest.router)
        self._interaction_routes = InteractionRoutes(self.state, events, deadline=interaction_deadline)
        self._interaction_routes.register(self._rest.router)
        self._builder = InteractionBuilder(self.state)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 at a free port."""
        app = web.Application()
        app.router.add_get("/", self._gateway.handle)
        app.router.add_route("*", "/{tail:.*}", self._rest.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        self.state.base_url = self.base_url
        self._gateway.url = self.gateway_url

    async def aclose(self) -> None:
        """Close gateway connections (1001), then stop listening."""
        if self._runner is None:
            return
        await self._gateway.close()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` must be (also READY's ``resume_gateway_url``)."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def bot_user(self) -> FakeUser:
        return self.state.bot_user

    # -- the world ---------------------------------------------------------------------------

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner_name: str = "owner",
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        shard: tuple[int, int] | None = None,
    ) -> FakeGuild:
        """A guild with @everyone, the bot's managed role, an owner, the bot, and a #general channel.

        Guilds added before the bot connects come with READY; for one added later, send its
        ``GUILD_CREATE`` yourself (``dispatch("GUILD_CREATE", server.guild_create_payload(id))``).
        ``shard=(shard_id, num_shards)`` picks an id whose events that shard carries.
        """
        return self.state.add_guild(name, owner_name=owner_name, bot_permissions=bot_permissions, shard=shard)

    def add_channel(self, guild_id: int, name: str) -> FakeChannel:
        return self.state.add_channel(guild_id, name)

    def add_role(self, guild_id: int, name: str, permissions: int = 0) -> FakeRole:
        return self.state.add_role(guild_id, name, permissions)

    def add_member(
        self,
        guild_id: int,
        user_id: int | None = None,
        name: str = "member",
        *,
        permissions: int = 0,
        roles: Iterable[FakeRole | int] = (),
    ) -> FakeMember:
        """A member; ``permissions`` becomes a role of their own (Discord grants permissions through roles)."""
        guild = self.state.guild(guild_id)
        user = self.state.users.get(user_id or 0) or self.state.add_user(name, user_id)
        role_ids = [r.id if isinstance(r, FakeRole) else r for r in roles]
        for role_id in role_ids:
            if role_id not in guild.roles:
                raise ValueError(f"role {role_id} is not in guild {guild_id}")
        if permissions:
            role_ids.append(self.add_role(guild_id, f"{name}-permissions", permissions).id)
        member = FakeMember(user=user, guild_id=guild_id, role_ids=role_ids)
        guild.members[user.id] = member
        return member

    def guild_create_payload(self, guild_id: int, intents: int = 1) -> JSON:
        return self._gateway.guild_create_payload(guild_id, intents)

    # -- gateway -----------------------------------------------------------------------------

    async def dispatch(self, event: str, data: JSON) -> None:
        """Push an event (``t=event``) to every connected or resumable session."""
        await self._gateway.dispatch(event, data)

    async def request_reconnect(self) -> None:
        """Op 7: the client closes and RESUMEs."""
        await self._gateway.request_reconnect()

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every gateway socket from the server side; sessions stay resumable."""
        await self._gateway.drop_connections(code)

    @property
    def sessions(self) -> Mapping[str, GatewaySession]:
        return self._gateway.sessions

    @property
    def recommended_shards(self) -> int:
        """The shard count ``GET /gateway/bot`` answers; change it before the bot connects."""
        return self.state.recommended_shards

    @recommended_shards.setter
    def recommended_shards(self, shards: int) -> None:
        self.state.recommended_shards = shards

    @property
    def attachment_size_limit(self) -> int:
        """Bytes per uploaded file: new interactions carry it, larger uploads are refused (413 40005)."""
        return self.state.attachment_size_limit

    @attachment_size_limit.setter
    def attachment_size_limit(self, size: int) -> None:
        self.state.attachment_size_limit = size

    # -- interactions ------------------------------------------------------------------------

    async def slash(
        self,
        guild_id: int,
        channel_id: int,
        user: UserRef,
        name: str,
        options: Mapping[str, OptionValue] | None = None,
        subcommand: str | None = None,
    ) -> InteractionRecord:
        """A member runs ``/name`` (``subcommand``: ``"sub"`` or ``"group sub"``); returns what was sent."""
        record = self._builder.slash(guild_id, channel_id, _user_id(user), name, options, subcommand)
        return await self._dispatch_interaction(record)

    async def message_command(
        self, guild_id: int, channel_id: int, user: UserRef, name: str, message: JSON | int
    ) -> InteractionRecord:
        """A member runs the message context-menu command ``name`` ("Apps" menu) on a stored message."""
        stored = self.state.message(message) if isinstance(message, int) else self.state.message(int(message["id"]))
        record = self._builder.message_command(guild_id, channel_id, _user_id(user), name, stored)
        return await self._dispatch_interaction(record)

    async def click(
        self,
        guild_id: int,
        channel_id: int,
        user: UserRef,
        message: JSON | int,
        custom_id: str,
        values: Sequence[str] | None = None,
    ) -> InteractionRecord:
        """A member clicks the component ``custom_id`` on ``message`` (a stored message or its id)."""
        stored = self.state.message(message) if isinstance(message, int) else self.state.message(int(message["id"]))
        record = self._builder.click(guild_id, channel_id, _user_id(user), stored, custom_id, values)
        return await self._dispatch_interaction(record)

    async def _dispatch_interaction(self, record: InteractionRecord) -> InteractionRecord:
        created_at = asyncio.get_running_loop().time()
        self.state.interactions[record.id] = InteractionState(record=record, created_at=created_at)
        self.state.tokens[record.token] = record.id
        await self._gateway.dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def redeliver(self, record: InteractionRecord) -> None:
        """Send the same INTERACTION_CREATE again (a duplicate delivery; the bot sees a fresh Interaction)."""
        await self._gateway.dispatch("INTERACTION_CREATE", record.payload)

    @property
    def interaction_deadline(self) -> float:
        """Seconds the bot has for its first callback; later ones are 404 10062 Unknown interaction."""
        return self._interaction_routes.deadline

    @interaction_deadline.setter
    def interaction_deadline(self, seconds: float) -> None:
        self._interaction_routes.deadline = seconds

    def expire_token(self, token: str) -> None:
        """The interaction token has outlived its 15 minutes: webhook routes answer 401 50027."""
        self.state.interactions[self.state.tokens[token]].token_expired = True

    def interaction(self, record: InteractionRecord) -> InteractionState:
        return self.state.interactions[record.id]

    def original_message(self, record: InteractionRecord) -> JSON | None:
        message_id = self.interaction(record).original_message_id
        return None if message_id is None else self.state.messages.get(message_id)

    # -- what the bot did --------------------------------------------------------------------

    def calls_to(self, method: str, path_prefix: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    @property
    def unknown_calls(self) -> list[Call]:
        return [c for c in self.calls if c.unknown]

    async def wait_for(
        self,
        predicate: Callable[[Call], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 -- a default deadline: a test that forgets one still stops
        since: int = 0,
    ) -> Call:
        """The first REST call (index ``since`` or later) that matches; waits until it arrives."""
        return await self.calls.wait_for(predicate, timeout=timeout, since=since)

    async def wait_for_frame(
        self,
        predicate: Callable[[GatewayFrame], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 -- a default deadline: a test that forgets one still stops
        since: int = 0,
    ) -> GatewayFrame:
        return await self.frames.wait_for(predicate, timeout=timeout, since=since)

    async def wait_for_response(
        self,
        record: InteractionRecord,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 -- a default deadline: a test that forgets one still stops
    ) -> Call:
        """The first callback call for this interaction (answered or refused)."""
        path = f"/interactions/{record.id}/{record.token}/callback"
        return await self.wait_for(lambda c: c.method == "POST" and c.path == path, timeout=timeout)

    def webhook_path(self, record: InteractionRecord) -> str:
        """``/webhooks/{application_id}/{token}``: the prefix of this interaction's followup routes."""
        return f"/webhooks/{self.application_id}/{record.token}"

    def message(self, message_id: int) -> JSON:
        return self.state.message(message_id)

    def commands(self, guild_id: int | None = None) -> list[JSON]:
        """The synced commands: global, or one guild's."""
        if guild_id is None:
            return self.state.global_commands
        return self.state.guild_commands.get(guild_id, [])

    def attachment_bytes(self, attachment: JSON) -> bytes:
        """The bytes of a stored attachment (a dict from a message's ``attachments``)."""
        return self.state.files[int(attachment["id"])][2]


def _user_id(user: UserRef) -> int:
    return user if isinstance(user, int) else user.id
