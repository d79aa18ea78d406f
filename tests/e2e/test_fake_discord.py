"""The real discord.py client against the fake Discord: login, sync, commands, buttons, errors, restarts.

The bot here is the smallest one that needs everything imaginebot's front end needs: a deferred
command answered by editing the original response with a PNG and a button, a persistent button, typed
options, a subcommand, and a fallback for an interaction token that expired while it worked.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_interactions import OptionValue
from tests.e2e.fake_models import JSON, FakeGuild, FakeMember, Permission
from tests.e2e.harness import running


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


class PingView(discord.ui.View):
    """One button. Persistent: ``timeout=None`` and a stable ``custom_id`` let it outlive a restart
    (discord.py's ``examples/views/persistent.py`` says the same)."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", style=discord.ButtonStyle.primary, custom_id="ping:1")
    async def again(self, interaction: discord.Interaction[PingBot], button: discord.ui.Button[PingView]) -> None:
        picture = discord.File(io.BytesIO(PNG), filename="again.png")
        await interaction.response.send_message("pong again", ephemeral=True, file=picture)
        try:
            await interaction.response.send_message("and again")
        except discord.InteractionResponded:
            # discord.py refuses a second response itself, before any request.
            interaction.client.outcomes.put_nowait("InteractionResponded")


class PingCog(commands.Cog):
    """The test bot's commands."""

    def __init__(self, bot: PingBot) -> None:
        self.bot = bot

    settings = app_commands.Group(name="settings", description="Per-server settings.")

    @app_commands.command()
    async def ping(self, interaction: discord.Interaction[PingBot]) -> None:
        """Answer with pong, a picture and a button."""
        await interaction.response.defer()
        picture = discord.File(io.BytesIO(PNG), filename="pong.png")
        await interaction.edit_original_response(content="pong", attachments=[picture], view=PingView())

    @app_commands.command()
    async def echo(
        self,
        interaction: discord.Interaction[PingBot],
        text: str,
        times: app_commands.Range[int, 1, 5],
        scale: float = 1.0,
        shout: bool = False,
    ) -> None:
        """Repeat some text.

        Args:
            text: what to repeat.
            times: how many times.
            scale: any number.
            shout: upper-case it.
        """
        words = " ".join([text.upper() if shout else text] * times)
        await interaction.response.send_message(f"{words} x{scale}")

    @app_commands.command()
    async def late(self, interaction: discord.Interaction[PingBot]) -> None:
        """Defer, work until told to stop, then answer; in the channel if the token expired meanwhile."""
        await interaction.response.defer(thinking=True)
        await self.bot.release_late.wait()
        try:
            await interaction.edit_original_response(content="late result")
        except discord.HTTPException as exc:
            if exc.code != 50027 or not isinstance(interaction.channel, discord.TextChannel):
                raise
            # The token lives 15 minutes; the channel outlives it.
            await interaction.channel.send("late result")

    @app_commands.command()
    async def steps(self, interaction: discord.Interaction[PingBot]) -> None:
        """Report progress in followups: the first fills in the deferred placeholder, later ones are new."""
        await interaction.response.defer(ephemeral=True)
        await interaction.followup.send("step 1")
        picture = discord.File(io.BytesIO(PNG), filename="step.png")
        progress = await interaction.followup.send("step 2", file=picture, wait=True)
        await progress.edit(content="step 2 done")
        await progress.delete()

    @settings.command(name="show")
    async def settings_show(self, interaction: discord.Interaction[PingBot]) -> None:
        """Show this server's settings."""
        await interaction.response.send_message("nothing to show", ephemeral=True)


class PingBot(commands.Bot):
    """A minimal real bot. ``outcomes`` and ``errors`` report what happened inside handlers."""

    def __init__(self, guild_id: int) -> None:
        # guild_ready_timeout: discord.py waits this long after the last GUILD_CREATE before READY
        # fires (default 2 s); the fake sends them all at once.
        super().__init__(
            command_prefix=commands.when_mentioned, intents=discord.Intents.default(), guild_ready_timeout=0.05
        )
        self.test_guild = discord.Object(id=guild_id)
        self.outcomes: asyncio.Queue[str] = asyncio.Queue()
        self.errors: asyncio.Queue[BaseException] = asyncio.Queue()
        self.release_late = asyncio.Event()

    async def setup_hook(self) -> None:
        self.add_view(PingView())
        await self.add_cog(PingCog(self), guild=self.test_guild)
        self.tree.error(self.on_app_command_error)

    async def on_app_command_error(
        self, interaction: discord.Interaction[PingBot], error: app_commands.AppCommandError
    ) -> None:
        self.errors.put_nowait(error.original if isinstance(error, app_commands.CommandInvokeError) else error)


@asynccontextmanager
async def ping_bot(server: FakeDiscord, guild: FakeGuild) -> AsyncIterator[PingBot]:
    bot = PingBot(guild.id)
    async with running(bot, server.token):
        yield bot


@pytest.fixture
async def bot(discord_server: FakeDiscord, discord_guild: FakeGuild) -> AsyncIterator[PingBot]:
    async with ping_bot(discord_server, discord_guild) as started:
        await started.tree.sync(guild=started.test_guild)
        yield started


@pytest.fixture
def alice(discord_server: FakeDiscord, discord_guild: FakeGuild) -> FakeMember:
    return discord_server.add_member(discord_guild.id, name="alice")


def _general(guild: FakeGuild) -> int:
    return guild.text_channels[0].id


async def _ping(server: FakeDiscord, guild: FakeGuild, member: FakeMember) -> JSON:
    """Run /ping to the end; the message it produced."""
    record = await server.slash(guild.id, _general(guild), member, "ping")
    original = f"{server.webhook_path(record)}/messages/@original"
    await server.wait_for(lambda c: c.method == "PATCH" and c.path == original)
    message = server.original_message(record)
    assert message is not None
    return message


async def test_login_ready_and_sync(discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot) -> None:
    assert bot.user is not None and bot.user.id == discord_server.bot_user.id
    assert bot.application_id == discord_server.application_id
    guild = bot.get_guild(discord_guild.id)
    assert guild is not None and guild.me is not None
    assert [c.name for c in guild.text_channels] == ["general"]

    synced = {c["name"]: c for c in discord_server.commands(discord_guild.id)}
    assert set(synced) == {"ping", "echo", "late", "steps", "settings"}
    assert [o["type"] for o in synced["echo"]["options"]] == [3, 4, 10, 5]
    (show,) = synced["settings"]["options"]
    assert (show["type"], show["name"]) == (1, "show")

    login = [(c.method, c.path) for c in discord_server.calls][:3]
    assert login == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
        ("PUT", f"/applications/{discord_server.application_id}/guilds/{discord_guild.id}/commands"),
    ]
    identify = await discord_server.wait_for_frame(lambda f: f.direction == "recv" and f.op == 2)
    assert identify.d["intents"] == discord.Intents.default().value
    assert discord_server.unknown_calls == []


async def test_slash_defers_then_edits_with_file_and_button(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    record = await discord_server.slash(discord_guild.id, _general(discord_guild), alice, "ping")

    callback = await discord_server.wait_for_response(record)
    assert (callback.status, callback.json) == (200, {"type": 5})
    assert callback.response["interaction"]["response_message_loading"] is True

    original = f"{discord_server.webhook_path(record)}/messages/@original"
    edit = await discord_server.wait_for(lambda c: c.method == "PATCH" and c.path == original)
    assert edit.status == 200
    assert edit.files == {"pong.png": PNG}
    assert edit.json["content"] == "pong"
    button = edit.json["components"][0]["components"][0]
    assert (button["type"], button["custom_id"]) == (2, "ping:1")

    message = discord_server.original_message(record)
    assert message is not None
    assert (message["content"], message["flags"], message["type"]) == ("pong", 0, 20)
    (attachment,) = message["attachments"]
    assert attachment | {"filename": "pong.png", "size": len(PNG), "width": 8, "height": 6} == attachment
    assert discord_server.attachment_bytes(attachment) == PNG
    assert await bot.http.get_from_cdn(attachment["url"]) == PNG
    assert discord_server.unknown_calls == []


async def test_button_click_answers_ephemerally_once(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    message = await _ping(discord_server, discord_guild, alice)

    click = await discord_server.click(discord_guild.id, _general(discord_guild), alice, message, "ping:1")

    callback = await discord_server.wait_for_response(click)
    assert callback.json["type"] == 4
    assert callback.json["data"]["flags"] == 64
    assert callback.files == {"again.png": PNG}  # multipart: payload_json + files[0]
    answer = callback.response["resource"]["message"]
    assert answer["flags"] == 64
    assert answer["attachments"][0]["ephemeral"] is True
    assert answer["interaction_metadata"]["interacted_message_id"] == message["id"]
    assert await asyncio.wait_for(bot.outcomes.get(), 5) == "InteractionResponded"
    assert discord_server.unknown_calls == []


async def test_second_response_is_refused_with_40060(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    record = await discord_server.slash(discord_guild.id, _general(discord_guild), alice, "ping")
    await discord_server.wait_for_response(record)
    path = f"/interactions/{record.id}/{record.token}/callback"
    mark = len(discord_server.calls)

    await discord_server.redeliver(record)  # a duplicate delivery: the bot answers a fresh Interaction

    refused = await discord_server.wait_for(lambda c: c.path == path, since=mark)
    assert (refused.status, refused.response["code"]) == (400, 40060)
    error = await asyncio.wait_for(bot.errors.get(), 5)
    assert isinstance(error, discord.HTTPException)
    assert (error.status, error.code) == (400, 40060)


async def test_expired_token_falls_back_to_a_channel_message(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    channel_id = _general(discord_guild)
    record = await discord_server.slash(discord_guild.id, channel_id, alice, "late")
    assert (await discord_server.wait_for_response(record)).json == {"type": 5}

    discord_server.expire_token(record.token)
    bot.release_late.set()

    original = f"{discord_server.webhook_path(record)}/messages/@original"
    refused = await discord_server.wait_for(lambda c: c.path == original)
    assert (refused.status, refused.response) == (401, {"message": "Invalid Webhook Token", "code": 50027})
    sent = await discord_server.wait_for(lambda c: c.method == "POST" and c.path == f"/channels/{channel_id}/messages")
    assert (sent.status, sent.json["content"]) == (200, "late result")
    created = await discord_server.wait_for_frame(
        lambda f: f.t == "MESSAGE_CREATE" and f.d["id"] == sent.response["id"]
    )
    assert created.d["guild_id"] == str(discord_guild.id)
    assert bot.errors.empty()


async def test_options_arrive_typed_and_subcommands_route(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot
) -> None:
    mod = discord_server.add_member(discord_guild.id, name="mod", permissions=Permission.MANAGE_GUILD)
    channel_id = _general(discord_guild)
    options: dict[str, OptionValue] = {"text": "hi", "times": 2, "scale": 1.5, "shout": True}

    record = await discord_server.slash(discord_guild.id, channel_id, mod, "echo", options)

    sent = [(o["name"], o["type"]) for o in record.payload["data"]["options"]]
    assert sent == [("text", 3), ("times", 4), ("scale", 10), ("shout", 5)]
    assert int(record.payload["member"]["permissions"]) & Permission.MANAGE_GUILD
    callback = await discord_server.wait_for_response(record)
    assert callback.json == {"type": 4, "data": callback.json["data"] | {"content": "HI HI x1.5"}}

    with pytest.raises(ValueError, match="outside"):
        await discord_server.slash(discord_guild.id, channel_id, mod, "echo", {"text": "x", "times": 9})
    with pytest.raises(ValueError, match="not synced"):
        await discord_server.slash(discord_guild.id, channel_id, mod, "imagine")

    shown = await discord_server.slash(discord_guild.id, channel_id, mod, "settings", subcommand="show")
    assert (await discord_server.wait_for_response(shown)).json["data"]["flags"] == 64
    assert bot.errors.empty()


async def test_gateway_resume_replays_what_was_missed(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    await discord_server.drop_connections()
    # Dispatched while the socket is down: kept in the session and replayed after RESUME.
    record = await discord_server.slash(
        discord_guild.id, _general(discord_guild), alice, "echo", {"text": "hi", "times": 1}
    )

    assert (await discord_server.wait_for_response(record)).status == 200
    await discord_server.wait_for_frame(lambda f: f.direction == "send" and f.t == "RESUMED")
    assert [f.op for f in discord_server.frames if f.direction == "recv" and f.op in (2, 6)] == [2, 6]

    mark = len(discord_server.frames)
    await discord_server.request_reconnect()  # op 7: the client closes and RESUMEs by itself
    await discord_server.wait_for_frame(lambda f: f.direction == "send" and f.t == "RESUMED", since=mark)
    assert [f.op for f in discord_server.frames.snapshot()[mark:] if f.direction == "recv" and f.op in (2, 6)] == [6]
    assert len(discord_server.sessions) == 1


async def test_persistent_button_survives_a_restart(
    discord_server: FakeDiscord, discord_guild: FakeGuild, alice: FakeMember
) -> None:
    async with ping_bot(discord_server, discord_guild) as first:
        await first.tree.sync(guild=first.test_guild)
        message = await _ping(discord_server, discord_guild, alice)
    closed = await discord_server.wait_for_frame(lambda f: f.direction == "closed")
    # Client.close() asks for 1000, but its gateway reader wakes first and closes with 4000, so on
    # Discord too the session stays resumable; the restarted bot IDENTIFYs a new one all the same.
    assert closed.op == 4000
    assert [s.connection for s in discord_server.sessions.values()] == [None]

    async with ping_bot(discord_server, discord_guild) as second:
        click = await discord_server.click(discord_guild.id, _general(discord_guild), alice, message, "ping:1")
        callback = await discord_server.wait_for_response(click)
        assert (callback.status, callback.json["type"], callback.json["data"]["flags"]) == (200, 4, 64)
        assert await asyncio.wait_for(second.outcomes.get(), 5) == "InteractionResponded"
    assert discord_server.unknown_calls == []


async def test_unknown_routes_and_invalid_bodies_answer_like_discord(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot
) -> None:
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/guilds/{guild_id}/bans", guild_id=discord_guild.id))
    (unknown,) = discord_server.unknown_calls
    assert (unknown.method, unknown.path, unknown.status) == ("GET", f"/guilds/{discord_guild.id}/bans", 404)

    bad = [{"name": "Bad Name", "description": "x"}]
    with pytest.raises(discord.HTTPException) as raised:
        await bot.http.bulk_upsert_guild_commands(discord_server.application_id, discord_guild.id, payload=bad)
    assert (raised.value.status, raised.value.code) == (400, 50035)


async def test_followups_fill_the_placeholder_then_post_edit_and_delete(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    record = await discord_server.slash(discord_guild.id, _general(discord_guild), alice, "steps")
    webhook = discord_server.webhook_path(record)

    deleted = await discord_server.wait_for(lambda c: c.method == "DELETE" and c.path.startswith(webhook))

    assert (await discord_server.wait_for_response(record)).json == {"type": 5, "data": {"flags": 64}}
    first, second = discord_server.calls_to("POST", webhook)
    assert (first.status, first.query["wait"]) == (200, "1")  # discord.py always waits on interaction webhooks
    placeholder = discord_server.original_message(record)
    assert placeholder is not None
    assert (placeholder["content"], placeholder["flags"]) == ("step 1", 64)  # ephemeral, no longer loading
    assert (second.status, second.files) == (200, {"step.png": PNG})
    step_id = second.response["id"]
    assert step_id != placeholder["id"] and second.response["flags"] == 0
    (edit,) = discord_server.calls_to("PATCH", f"{webhook}/messages/{step_id}")
    assert (edit.status, edit.response["content"]) == (200, "step 2 done")
    assert (deleted.path, deleted.status) == (f"{webhook}/messages/{step_id}", 204)
    await discord_server.wait_for_frame(lambda f: f.t == "MESSAGE_DELETE" and f.d["id"] == step_id)
    assert bot.errors.empty()
    assert discord_server.unknown_calls == []


async def test_a_first_response_after_the_deadline_is_unknown_interaction(
    discord_server: FakeDiscord, discord_guild: FakeGuild, bot: PingBot, alice: FakeMember
) -> None:
    discord_server.interaction_deadline = 0.0  # Discord allows 3 s

    record = await discord_server.slash(discord_guild.id, _general(discord_guild), alice, "ping")

    refused = await discord_server.wait_for_response(record)
    assert (refused.status, refused.response) == (404, {"message": "Unknown interaction", "code": 10062})
    error = await asyncio.wait_for(bot.errors.get(), 5)
    assert isinstance(error, discord.NotFound)
    assert error.code == 10062
