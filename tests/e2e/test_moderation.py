"""Moderators end to end: review cards, decisions, strikes, bans, appeals and the audit export, with the
real discord.py client, the real service (tiny model, prompt + integrity stages) and a fake Discord.

"a woman in lingerie" is *flagged* by the prompt filter in an ordinary channel (suggestive), so its
images are held; "a gory zombie" is *blocked* (graphic violence, appealable).
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data as skimage_data

from bot.chat.client import ImagineBot
from bot.chat.moderation import ModerationCog
from bot.jobs import JobState
from bot.service import ImagineService
from tests.e2e.call_log import Call
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import JSON, FakeChannel, FakeGuild, FakeRole, Permission
from tests.e2e.results import custom_ids, original_path

EPHEMERAL = 64
FLAGGED_PROMPT = "a woman in lingerie"
BLOCKED_PROMPT = "a gory zombie"


@pytest.fixture
def reviews(discord_server: FakeDiscord, discord_guild: FakeGuild) -> FakeChannel:
    """#reviews, made before the bot connects."""
    return discord_server.add_channel(discord_guild.id, "reviews")


@pytest.fixture
def general(discord_guild: FakeGuild) -> FakeChannel:
    return next(c for c in discord_guild.channels.values() if c.name == "general")


@pytest.fixture
def mods(discord_server: FakeDiscord, discord_guild: FakeGuild) -> FakeRole:
    """The moderator role, made before the bot connects (discord.py resolves members' roles from its cache)."""
    return discord_server.add_role(discord_guild.id, "mods")


@pytest.fixture
def settings(settings: Any, reviews: FakeChannel, mods: FakeRole) -> Any:
    return replace(settings, dashboard_url="http://127.0.0.1:8080")


def cog_of(bot: ImagineBot) -> ModerationCog:
    cog = bot.get_cog("ModerationCog")
    assert isinstance(cog, ModerationCog)
    return cog


def service_of(bot: ImagineBot) -> ImagineService:
    return cog_of(bot).service


async def imagine(server: FakeDiscord, guild: FakeGuild, channel: FakeChannel, user: Any, prompt: str) -> Any:
    return await server.slash(guild.id, channel.id, user, "imagine", {"prompt": prompt, "count": 2, "seed": 3})


async def card_in(server: FakeDiscord, channel: FakeChannel, *, since: int = 0) -> JSON:
    """The next review card posted in ``channel``."""
    call = await server.wait_for(lambda c: c.method == "POST" and c.path == f"/channels/{channel.id}/messages",
                                 timeout=60, since=since)  # fmt: skip
    return server.message(int(call.response["id"]))


async def answer(server: FakeDiscord, record: Any) -> JSON:
    call = await server.wait_for_response(record, timeout=30)
    data: JSON = call.json["data"]
    return data


async def channel_post(server: FakeDiscord, channel: FakeChannel, text: str, *, since: int = 0) -> Call:
    return await server.wait_for(lambda c: c.method == "POST" and c.path == f"/channels/{channel.id}/messages"
                                 and text in (c.json or {}).get("content", ""), timeout=60, since=since)  # fmt: skip


def existing(paths: list[str]) -> list[bool]:
    return [Path(p).exists() for p in paths]


def _held_notice(call: Call, path: str) -> bool:
    return (
        call.method == "PATCH" and call.path == path and "held for a moderator" in (call.json or {}).get("content", "")
    )


async def held_job(server: FakeDiscord, guild: FakeGuild, general: FakeChannel, reviews: FakeChannel,
                   user: Any) -> tuple[str, JSON]:  # fmt: skip
    """/imagine a flagged prompt; wait for the requester's notice and the card. Returns (job id, card)."""
    mark = len(server.calls)
    record = await imagine(server, guild, general, user, FLAGGED_PROMPT)
    path = original_path(server, record)
    notice = await server.wait_for(lambda c: _held_notice(c, path), timeout=60)
    assert "(sexual content)" in notice.json["content"] and not notice.files  # nothing posted, the category named
    card = await card_in(server, reviews, since=mark)
    job_id = custom_ids(card)[0].split(":")[2]
    return job_id, card


async def test_flag_card_refusal_reveal_approve_post(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, reviews: FakeChannel,
    mods: FakeRole,
) -> None:  # fmt: skip
    server, guild, role = discord_server, discord_guild, mods
    alice = server.add_member(guild.id, name="alice")
    mallory = server.add_member(guild.id, name="mallory")
    mod = server.add_member(guild.id, name="mod", roles=[role.id])
    service = service_of(bot)
    await service.guild_configs.set_review_channel(str(guild.id), reviews.id, actor_id="owner")
    await service.guild_configs.set_moderator_role(str(guild.id), role.id, actor_id="owner")

    job_id, card = await held_job(server, guild, general, reviews, alice)
    assert custom_ids(card) == [f"mod:{a}:{job_id}" for a in "eajtb"]
    assert FLAGGED_PROMPT in card["content"] and f"<@{alice.id}>" in card["content"]
    assert "prompt.sexual" in card["content"]  # the stage scores
    assert len(card["attachments"]) == 2  # blurred previews, one per held image
    assert (await service.storage.get_job(job_id)).state is JobState.FLAGGED

    # A member who is not a moderator is refused, privately, and nothing changes.
    for action in "eajtb":
        refused = await answer(
            server, await server.click(guild.id, reviews.id, mallory, card, f"mod:{action}:{job_id}")
        )
        assert refused["flags"] & EPHEMERAL and refused["content"].startswith("Only moderators"), action
    assert (await service.storage.review(job_id)).pending  # type: ignore[union-attr]

    # Reveal: the unblurred images, to the moderator alone.
    revealed_call = await server.wait_for_response(await server.click(guild.id, reviews.id, mod, card,
                                                                      f"mod:e:{job_id}"))  # fmt: skip
    assert revealed_call.json["data"]["flags"] & EPHEMERAL, revealed_call.json
    assert len(revealed_call.files) == 2, revealed_call.json

    # Approve: posted in the original channel behind a spoiler (sexual), with its buttons; the card says who.
    mark = len(server.calls)
    approved = await answer(server, await server.click(guild.id, reviews.id, mod, card, f"mod:a:{job_id}"))
    assert approved["flags"] & EPHEMERAL and approved["content"] == "Approved."
    post = await channel_post(server, general, "approved by a moderator", since=mark)
    assert post.json["content"].startswith(f"<@{alice.id}>")
    [name] = post.files
    assert name.startswith("SPOILER_")
    assert f"ib:u:{job_id}:0" in custom_ids(post.response)
    edit = await server.wait_for(lambda c: c.method == "PATCH" and c.path == f"/channels/{reviews.id}/messages/"
                                 f"{card['id']}", timeout=30, since=mark)  # fmt: skip
    assert f"Approved by <@{mod.id}>" in edit.json["content"] and edit.json.get("components") == []
    assert (await service.storage.get_job(job_id)).state is JobState.APPROVED
    assert (await service.storage.review(job_id)).delivered_at is not None  # type: ignore[union-attr]

    actions = [e.action for e in await service.storage.audit_entries(guild_id=str(guild.id))]
    assert "review_approve" in actions and "review_reject" not in actions


async def test_concurrent_decisions_one_wins(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, reviews: FakeChannel
) -> None:
    server, guild = discord_server, discord_guild
    alice = server.add_member(guild.id, name="alice")
    mod1 = server.add_member(guild.id, name="mod1", permissions=Permission.MANAGE_MESSAGES)
    mod2 = server.add_member(guild.id, name="mod2", permissions=Permission.MANAGE_MESSAGES)
    service = service_of(bot)
    await service.guild_configs.set_review_channel(str(guild.id), reviews.id, actor_id="owner")
    job_id, card = await held_job(server, guild, general, reviews, alice)

    first, second = await asyncio.gather(
        server.click(guild.id, reviews.id, mod1, card, f"mod:a:{job_id}"),
        server.click(guild.id, reviews.id, mod2, card, f"mod:j:{job_id}"),
    )
    texts = sorted([(await answer(server, first))["content"], (await answer(server, second))["content"]])
    review = await service.storage.review(job_id)
    assert review is not None and review.decided_by in (str(mod1.id), str(mod2.id))
    winner_words = "Approved." if review.decision == "approve" else "Rejected."
    assert winner_words in texts
    assert any(t.startswith(f"Already decided: {review.decision} by <@{review.decided_by}>") for t in texts)
    job = await service.storage.get_job(job_id)
    assert job.state is (JobState.APPROVED if review.decision == "approve" else JobState.REJECTED)
    assert len([e for e in await service.storage.audit_entries() if e.action.startswith("review_")]) == 1


async def test_reject_with_strikes_bans_after_the_limit_and_unban(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, reviews: FakeChannel
) -> None:
    server, guild = discord_server, discord_guild
    alice = server.add_member(guild.id, name="alice")
    mod = server.add_member(guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    service = service_of(bot)
    await service.guild_configs.set_review_channel(str(guild.id), reviews.id, actor_id="owner")
    await service.guild_configs.set_strikes(str(guild.id), actor_id="owner", limit=2, window_hours=24, ban_hours=0)

    job1, card1 = await held_job(server, guild, general, reviews, alice)
    mark = len(server.calls)
    first = await answer(server, await server.click(guild.id, reviews.id, mod, card1, f"mod:t:{job1}"))
    assert first["content"] == "Rejected with a strike. They now have 1 strike(s) in the window."
    told = await channel_post(server, general, "was not approved by a moderator", since=mark)
    assert told.json["content"].startswith(f"<@{alice.id}>") and not told.files

    job2, card2 = await held_job(server, guild, general, reviews, alice)
    second = await answer(server, await server.click(guild.id, reviews.id, mod, card2, f"mod:t:{job2}"))
    assert "2 strike(s)" in second["content"] and "banned from the bot here until lifted" in second["content"]

    refused = await answer(server, await imagine(server, guild, general, alice, "a lighthouse at dusk"))
    assert refused["flags"] & EPHEMERAL
    assert refused["content"] == "You are banned from using this bot in this server, until a moderator lifts it."

    history = await answer(server, await server.slash(guild.id, general.id, mod, "mod", {"user": alice},
                                                      subcommand="history"))  # fmt: skip
    assert "2 strike(s)" in history["content"] and "banned until lifted" in history["content"]
    lifted = await answer(server, await server.slash(guild.id, general.id, mod, "mod", {"user": alice},
                                                     subcommand="unban"))  # fmt: skip
    assert lifted["content"] == f"<@{alice.id}> may use the bot again."
    again = await server.wait_for_response(await imagine(server, guild, general, alice, "a lighthouse at dusk"))
    assert again.json["type"] == 5  # deferred: accepted


async def test_appeal_of_a_block_reaches_moderators_and_reruns_into_review(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, reviews: FakeChannel
) -> None:
    server, guild = discord_server, discord_guild
    alice = server.add_member(guild.id, name="alice")
    bob = server.add_member(guild.id, name="bob")
    mod = server.add_member(guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    service = service_of(bot)
    await service.guild_configs.set_review_channel(str(guild.id), reviews.id, actor_id="owner")

    record = await imagine(server, guild, general, alice, BLOCKED_PROMPT)
    blocked = await answer(server, record)
    assert blocked["flags"] & EPHEMERAL and "graphic violence" in blocked["content"]
    [appeal_id] = custom_ids(blocked)
    job_id = appeal_id.split(":")[2]
    assert appeal_id == f"mod:p:{job_id}"
    stored = server.original_message(record)  # the ephemeral notice, with its button
    assert stored is not None

    refused = await answer(server, await server.click(guild.id, general.id, bob, stored, appeal_id))
    assert refused["content"] == "Only the person who made this request can ask for a review of it."
    mark = len(server.calls)
    sent = await answer(server, await server.click(guild.id, general.id, alice, stored, appeal_id))
    assert sent["content"].startswith("Sent to the moderators")
    again = await answer(server, await server.click(guild.id, general.id, alice, stored, appeal_id))
    assert again["content"] == "A review of this job is already waiting for a moderator."

    card = await card_in(server, reviews, since=mark)
    assert card["content"].startswith("**Appeal of a block**") and "graphic violence" in card["content"]
    assert custom_ids(card) == [f"mod:{a}:{job_id}" for a in "ajtb"]  # no Reveal: nothing was stored

    # Accepted: the request runs again; its images are held for review (never posted on the appeal alone).
    mark = len(server.calls)
    await answer(server, await server.click(guild.id, reviews.id, mod, card, f"mod:a:{job_id}"))
    await channel_post(server, general, "sent back for generation after review", since=mark)
    rerun_card = await card_in(server, reviews, since=len(server.calls))
    rerun_id = custom_ids(rerun_card)[0].split(":")[2]
    rerun = await service.storage.get_job(rerun_id)
    assert rerun.request.appeal_of == job_id and rerun.state is JobState.FLAGGED
    assert rerun_card["content"].startswith("**Held for review**") and len(rerun_card["attachments"]) == 2


async def test_hard_blocks_cannot_be_appealed(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    data = await answer(discord_server, await imagine(discord_server, discord_guild, general, alice,
                                                      "a nude 12 year old"))  # fmt: skip
    assert data["flags"] & EPHEMERAL and custom_ids(data) == []


async def test_mod_queue_without_review_channel_and_audit_export(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel
) -> None:
    server, guild = discord_server, discord_guild
    alice = server.add_member(guild.id, name="alice")
    mod = server.add_member(guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    record = await imagine(server, guild, general, alice, FLAGGED_PROMPT)
    path = original_path(server, record)
    await server.wait_for(lambda c: _held_notice(c, path), timeout=60)

    refused = await answer(server, await server.slash(guild.id, general.id, alice, "mod", subcommand="queue"))
    assert refused["content"].startswith("Only moderators")
    queue_record = await server.slash(guild.id, general.id, mod, "mod", subcommand="queue")
    queue = await answer(server, queue_record)
    assert queue["content"].startswith("**1 waiting for review**") and "No review channel is set" in queue["content"]
    [first] = custom_ids(queue)[:1]
    job_id = first.split(":")[2]
    stored = server.original_message(queue_record)
    assert stored is not None
    decided = await answer(server, await server.click(guild.id, general.id, mod, stored, f"mod:j:{job_id}"))
    assert decided["content"] == "Rejected."

    export_call = await server.wait_for_response(await server.slash(guild.id, general.id, mod, "mod",
                                                                    {"since": "1d"}, subcommand="audit"))  # fmt: skip
    assert export_call.json["data"]["flags"] & EPHEMERAL
    [(name, data)] = export_call.files.items()
    assert name == "imaginebot-audit.csv"
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[0] == ["time_utc", "action", "actor_id", "target", "detail"]
    assert ["review_reject", str(mod.id), job_id] in [r[1:4] for r in rows]
    bad = await answer(server, await server.slash(guild.id, general.id, mod, "mod", {"since": "soon"},
                                                  subcommand="audit"))  # fmt: skip
    assert bad["content"].startswith("since: use a duration")

    # /mod dashboard: a private one-time login link to the configured dashboard, for moderators only.
    link = await answer(server, await server.slash(guild.id, general.id, mod, "mod", subcommand="dashboard"))
    assert link["flags"] & EPHEMERAL and "http://127.0.0.1:8080/" in link["content"]
    denied = await answer(server, await server.slash(guild.id, general.id, alice, "mod", subcommand="dashboard"))
    assert denied["content"].startswith("Only moderators") and "http" not in denied["content"]


async def test_blocklist_protect_and_strike_settings(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel
) -> None:
    server, guild = discord_server, discord_guild
    alice = server.add_member(guild.id, name="alice")
    mod = server.add_member(guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    admin = server.add_member(guild.id, name="admin", permissions=Permission.MANAGE_GUILD)

    async def mod_command(sub: str, user: Any = mod, **options: Any) -> JSON:
        return await answer(server, await server.slash(guild.id, general.id, user, "mod", options, subcommand=sub))

    # A server's own blocked term refuses prompts here at once (the filter gets the new list).
    assert (await mod_command("blocklist add", alice, term="bananas", category="hate"))["content"].startswith(
        "Only moderators"
    )
    assert (await mod_command("blocklist add", term="bananas", category="hate"))["content"] == (
        "Added. This server lists 1 term(s)."
    )
    assert "`bananas`" in (await mod_command("blocklist list"))["content"]
    refused = await answer(server, await imagine(server, guild, general, alice, "a bowl of b4nanas"))
    assert refused["flags"] & EPHEMERAL and "hateful content" in refused["content"]
    assert (await mod_command("blocklist remove", term="bananas"))["content"] == "Removed."
    accepted = await server.wait_for_response(await imagine(server, guild, general, alice, "a bowl of bananas"))
    assert accepted.json["type"] == 5

    # Protect a person from a photo of their face (the deepfake filter then blocks their likeness here).
    photo = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(photo, format="PNG")
    record = await server.slash(guild.id, general.id, mod, "mod", {"name": "Eileen Collins",
                                "image": ("eileen.png", photo.getvalue())}, subcommand="protect add")  # fmt: skip
    added = await server.wait_for(lambda c: c.method == "POST" and server.webhook_path(record) in c.path, timeout=60)
    assert added.json["content"] == "Eileen Collins is now protected in this server.", added.json
    assert "Eileen Collins" in (await mod_command("protect list"))["content"]
    audit = await service_of(bot).storage.audit_entries(guild_id=str(guild.id))
    assert ("protect_add", str(mod.id), "Eileen Collins") in [(e.action, e.actor_id, e.target) for e in audit]
    assert (await mod_command("protect remove", name="Eileen Collins"))["content"] == "Removed."
    assert (await mod_command("protect list"))["content"] == "Nobody is protected yet."

    # Strike settings: Manage Server only; shown by /settings show.
    async def settings_command(sub: str, user: Any, **options: Any) -> JSON:
        return await answer(server, await server.slash(guild.id, general.id, user, "settings", options,
                                                       subcommand=sub))  # fmt: skip

    assert (await settings_command("strikes", mod, limit=5))["content"].startswith("You need the Manage Server")
    saved = await settings_command("strikes", admin, limit=5, window_hours=48, ban_hours=12)
    assert saved["content"] == "Saved. Strikes: 5 within 48 h ban a member from the bot for 12 h."
    assert "Strikes: 5 within 48 h" in (await settings_command("show", admin))["content"]


async def test_privacy_delete_removes_a_members_data_and_keeps_moderation_anonymised(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild, general: FakeChannel, reviews: FakeChannel
) -> None:
    server, guild = discord_server, discord_guild
    alice = server.add_member(guild.id, name="alice")
    mod = server.add_member(guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    service = service_of(bot)
    await service.guild_configs.set_review_channel(str(guild.id), reviews.id, actor_id="owner")
    job_id, card = await held_job(server, guild, general, reviews, alice)
    await answer(server, await server.click(guild.id, reviews.id, mod, card, f"mod:t:{job_id}"))  # a strike
    files = [o.path for o in await service.storage.outputs_for(job_id)]
    assert files and all(existing(files))

    ask = await answer(server, await server.slash(guild.id, general.id, alice, "privacy", subcommand="delete"))
    assert ask["flags"] & EPHEMERAL and "confirm:True" in ask["content"]
    assert await service.storage.list_jobs(user_id=str(alice.id))  # nothing deleted without confirming
    record = await server.slash(guild.id, general.id, alice, "privacy", {"confirm": True}, subcommand="delete")
    done = await server.wait_for(lambda c: c.method == "POST" and server.webhook_path(record) in c.path
                                 and "Deleted" in (c.json or {}).get("content", ""), timeout=30)  # fmt: skip
    assert done.json["content"].startswith("Deleted 1 job(s)")
    assert await service.storage.list_jobs(user_id=str(alice.id)) == []
    assert not any(existing(files))
    moderation = cog_of(bot).moderation
    review = await service.storage.review(job_id)
    assert review is not None and review.user_id == moderation.pseudonym(str(alice.id))
    assert len(await service.storage.strikes(str(guild.id), moderation.identities(str(alice.id)))) == 1
    entries = await service.storage.audit_entries()
    assert all(str(alice.id) not in (e.actor_id or "", e.target or "") for e in entries)
