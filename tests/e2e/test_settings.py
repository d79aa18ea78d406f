"""/settings end to end: the real discord.py client and service against a fake Discord."""

from __future__ import annotations

from typing import Any

import pytest

from bot.chat.client import ImagineBot
from bot.chat.settings import SettingsCog
from bot.config import Settings
from bot.storage import Storage
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import JSON, FakeChannel, FakeGuild, Permission
from tests.e2e.results import final_message, final_upload, job_of, original_path

EPHEMERAL = 64


@pytest.fixture
def art(discord_server: FakeDiscord, discord_guild: FakeGuild) -> FakeChannel:
    """A second channel, made before the bot connects."""
    return discord_server.add_channel(discord_guild.id, "art")


@pytest.fixture
def general(discord_guild: FakeGuild) -> FakeChannel:
    return next(c for c in discord_guild.channels.values() if c.name == "general")


@pytest.fixture
def settings(settings: Settings, art: FakeChannel) -> Settings:
    """conftest's settings, asked for after #art exists: READY lists the channel when the bot connects."""
    return settings


def storage_of(bot: ImagineBot) -> Storage:
    cog = bot.get_cog("SettingsCog")
    assert isinstance(cog, SettingsCog)
    return cog.store.storage


async def settings_command(
    server: FakeDiscord, guild: FakeGuild, where: FakeChannel, user: Any, sub: str, **options: Any
) -> JSON:
    """Run ``/settings <sub>`` in channel ``where`` and return the data of the (one) answer."""
    record = await server.slash(guild.id, where.id, user, "settings", options, subcommand=sub)
    answer = await server.wait_for_response(record)
    assert answer.json["type"] == 4
    data: JSON = answer.json["data"]
    return data


async def test_settings_is_refused_to_non_admins(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, art: FakeChannel
) -> None:
    [command] = [c for c in discord_server.commands(discord_guild.id) if c["name"] == "settings"]
    assert int(command["default_member_permissions"]) == Permission.MANAGE_GUILD  # hidden from others in Discord
    member = discord_server.add_member(discord_guild.id, name="member")
    moderator = discord_server.add_member(discord_guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    # Discord lets admins override default permissions, and this fake does not enforce them: the bot must.
    attempts: list[tuple[Any, str, dict[str, Any]]] = [
        (member, "show", {}),
        (member, "channels add", {"channel": art}),
        (moderator, "strictness", {"level": "relaxed"}),
        (moderator, "limits", {"per_user": 1}),
    ]
    for user, sub, options in attempts:
        data = await settings_command(discord_server, discord_guild, general, user, sub, **options)
        assert data["flags"] & EPHEMERAL, sub
        assert data["content"].startswith("You need the Manage Server permission"), sub
    storage = storage_of(bot)
    assert await storage.guild_settings(str(discord_guild.id)) == {}
    assert await storage.audit_entries() == []

    # The same command from a member with Manage Server is applied.
    admin = discord_server.add_member(discord_guild.id, name="admin", permissions=Permission.MANAGE_GUILD)
    data = await settings_command(discord_server, discord_guild, general, admin, "strictness", level="relaxed")
    assert data["flags"] & EPHEMERAL and data["content"] == "Saved. Safety strictness: relaxed."
    assert await storage.guild_settings(str(discord_guild.id)) == {"strictness": "relaxed"}
    [entry] = await storage.audit_entries()
    assert entry.actor_id == str(admin.id) and entry.detail == {"old": "standard", "new": "relaxed"}


async def test_imagine_only_works_in_the_channels_an_admin_allowed(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, art: FakeChannel
) -> None:
    admin = discord_server.add_member(discord_guild.id, name="admin", permissions=Permission.MANAGE_GUILD)
    alice = discord_server.add_member(discord_guild.id, name="alice")
    data = await settings_command(discord_server, discord_guild, general, admin, "channels add", channel=art)
    assert data["content"] == f"Saved. /imagine works in: <#{art.id}>."

    refused = await discord_server.slash(discord_guild.id, general.id, alice, "imagine", {"prompt": "a fox"})
    answer = await discord_server.wait_for_response(refused)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] & EPHEMERAL
    assert answer.json["data"]["content"] == (
        f"/imagine is not allowed in this channel; this server allows it in <#{art.id}>."
    )
    assert await storage_of(bot).list_jobs() == []

    accepted = await discord_server.slash(discord_guild.id, art.id, alice, "imagine", {"prompt": "a fox", "count": 1})
    answer = await discord_server.wait_for_response(accepted)
    assert answer.json["type"] == 5  # deferred: queued
    path = original_path(discord_server, accepted)
    await discord_server.wait_for(lambda c: c.method == "PATCH" and c.path == path, timeout=30)
    [job] = await storage_of(bot).list_jobs()
    assert job.request.channel_id == str(art.id)


async def test_an_admins_strictness_and_limits_show_up_in_show(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel
) -> None:
    owner = discord_guild.owner_id  # the owner has every permission
    before = await settings_command(discord_server, discord_guild, general, owner, "show")
    assert "Safety strictness: standard." in before["content"]
    assert "flagged images wait in the queue" in before["content"]

    data = await settings_command(discord_server, discord_guild, general, owner, "strictness", level="strict")
    assert data["content"] == "Saved. Safety strictness: strict."
    data = await settings_command(discord_server, discord_guild, general, owner, "limits", per_user=1, cooldown=30,
                                  queue=5)  # fmt: skip
    assert data["content"].startswith("Saved. Limits: 1 jobs queued or running per member (this bot allows 3)")
    refused = await settings_command(discord_server, discord_guild, general, owner, "limits", per_user=4)
    assert refused["flags"] & EPHEMERAL and "this bot's operator allows at most 3" in refused["content"]

    after = await settings_command(discord_server, discord_guild, general, owner, "show")
    assert after["flags"] & EPHEMERAL
    assert "Safety strictness: strict." in after["content"]
    assert (
        "Limits: 1 jobs queued or running per member (this bot allows 3), 30 s between one member's requests, "
        "5 jobs waiting in this server (this bot allows 50)."
    ) in after["content"]
    assert "/imagine works in: every channel." in after["content"]
    assert "Content Credentials: no personal data" in after["content"]
    data = await settings_command(discord_server, discord_guild, general, owner, "credentials", include_prompt=True)
    assert data["content"] == "Saved. Content Credentials: include the prompt (never the member)."
    assert (await storage_of(bot).guild_settings(str(discord_guild.id)))["credentials_personal"] is True


async def test_buttons_follow_the_servers_settings(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, art: FakeChannel
) -> None:
    owner = discord_guild.owner_id
    alice = discord_server.add_member(discord_guild.id, name="alice")
    data = await settings_command(discord_server, discord_guild, general, owner, "variations", mode="subtle")
    assert data["content"] == "Saved. Variations (V1-V4): subtle."
    record = await discord_server.slash(discord_guild.id, general.id, alice, "imagine",
                                        {"prompt": "a green star", "count": 1, "seed": 4})  # fmt: skip
    grid = await final_message(discord_server, record)
    job_id = job_of(grid)

    # V1 uses the server's variation mode.
    click = await discord_server.click(discord_guild.id, general.id, alice, grid, f"ib:v:{job_id}:0")
    assert (await discord_server.wait_for_response(click)).json["type"] == 5
    done = await final_upload(discord_server, click)
    assert "variations (subtle) of image 1" in done.json["content"]

    # Once /imagine is limited to #art, a click in #general that would make a new job is refused privately.
    await settings_command(discord_server, discord_guild, general, owner, "channels add", channel=art)
    jobs_before = len(await storage_of(bot).list_jobs())
    for custom_id in (f"ib:v:{job_id}:0", f"ib:r:{job_id}"):
        click = await discord_server.click(discord_guild.id, general.id, alice, grid, custom_id)
        answer = (await discord_server.wait_for_response(click)).json
        assert answer["type"] == 4 and answer["data"]["flags"] & EPHEMERAL
        assert (
            answer["data"]["content"]
            == f"/imagine is not allowed in this channel; this server allows it in <#{art.id}>."
        )
    assert len(await storage_of(bot).list_jobs()) == jobs_before
