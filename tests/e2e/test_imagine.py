"""/imagine end to end: the real discord.py client, the real service and tiny model, a fake Discord."""

from __future__ import annotations

import io
import itertools
import os
from typing import Any

from PIL import Image

from bot.chat.client import ImagineBot
from bot.chat.imagine import EDIT_INTERVAL, ImagineCog
from bot.config import Settings
from bot.jobs import VARIATION_STRENGTH, JobKind
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import JSON, FakeGuild, Permission
from tests.e2e.harness import running
from tests.e2e.results import custom_ids, final_message, job_of, original_path


def channel_of(guild: FakeGuild) -> int:
    return next(iter(guild.channels.values())).id


async def imagine(server: FakeDiscord, guild: FakeGuild, user: Any, **options: Any) -> Any:
    return await server.slash(guild.id, channel_of(guild), user, "imagine", options)


async def queued_message(server: FakeDiscord, record: Any) -> JSON:
    """The job's message once the bot has first edited it (queued, with the Cancel button)."""
    path = original_path(server, record)
    await server.wait_for(lambda c: c.method == "PATCH" and c.path == path, timeout=30)
    message = server.original_message(record)
    assert message is not None
    return message


async def test_imagine_defers_then_posts_the_grid_with_buttons(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    commands = {c["name"] for c in discord_server.commands(discord_guild.id)}
    assert {"imagine", "queue"} <= commands
    alice = discord_server.add_member(discord_guild.id, name="alice")
    record = await imagine(discord_server, discord_guild, alice, prompt="a lighthouse at dusk", count=2, seed=7)
    callback = await discord_server.wait_for_response(record)
    assert callback.json["type"] == 5  # deferred, exactly once
    message = await final_message(discord_server, record)
    ids = custom_ids(message)
    job_id = ids[0].split(":")[2]
    assert ids == [f"ib:u:{job_id}:0", f"ib:u:{job_id}:1", f"ib:r:{job_id}", f"ib:v:{job_id}:0", f"ib:v:{job_id}:1",
                   f"ib:k:{job_id}:0", f"ib:k:{job_id}:1", f"ib:d:{job_id}"]  # fmt: skip
    assert "seed `7`" in message["content"] and "a lighthouse at dusk" in message["content"]
    [attachment] = message["attachments"]
    assert discord_server.attachment_bytes(attachment).startswith(b"\x89PNG")
    assert len(discord_server.calls_to("POST", f"/interactions/{record.id}")) == 1
    assert discord_server.unknown_calls == []

    # U2 posts that image alone, by anyone in the channel.
    bob = discord_server.add_member(discord_guild.id, name="bob")
    click = await discord_server.click(discord_guild.id, channel_of(discord_guild), bob, message, f"ib:u:{job_id}:1")
    answer = await discord_server.wait_for_response(click)
    assert answer.json["type"] == 4 and "Image 2" in answer.json["data"]["content"] and answer.files
    assert custom_ids(answer.json["data"]) == [f"ib:s:{job_id}:1", f"ib:g:{job_id}:1", f"ib:z:{job_id}:1"]


async def test_bad_options_and_blocked_prompts_get_private_errors(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    record = await imagine(discord_server, discord_guild, alice, prompt="a n.u.d.e woman")
    answer = await discord_server.wait_for_response(record)
    assert answer.json["type"] == 4 and answer.json["data"]["flags"] & 64
    assert "sexual content" in answer.json["data"]["content"]
    record = await imagine(discord_server, discord_guild, alice, prompt="a cat", model="sdxl")
    answer = await discord_server.wait_for_response(record)
    assert answer.json["data"]["flags"] & 64 and "is not available here" in answer.json["data"]["content"]


async def test_cancel_is_refused_to_strangers_and_allowed_to_the_requester(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    mallory = discord_server.add_member(discord_guild.id, name="mallory")
    record = await imagine(discord_server, discord_guild, alice, prompt="a slow painting", steps=150, count=4)
    path = original_path(discord_server, record)
    message = await queued_message(discord_server, record)
    [cancel_id] = [i for i in custom_ids(message) if i.startswith("ib:x:")]
    channel = channel_of(discord_guild)
    refused = await discord_server.click(discord_guild.id, channel, mallory, message, cancel_id)
    answer = await discord_server.wait_for_response(refused)
    assert answer.json["data"]["flags"] & 64 and "Only the person who asked" in answer.json["data"]["content"]
    accepted = await discord_server.click(discord_guild.id, channel, alice, message, cancel_id)
    answer = await discord_server.wait_for_response(accepted)
    assert "Cancelling" in answer.json["data"]["content"]
    await discord_server.wait_for(
        lambda c: c.method == "PATCH" and c.path == path and "was cancelled" in str(c.json), timeout=60
    )


async def test_buttons_work_after_a_restart(
    settings: Settings, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    first = ImagineBot(settings, guild_ready_timeout=0.05)
    async with running(first, discord_server.token, timeout=60):
        record = await imagine(discord_server, discord_guild, alice, prompt="a red circle", count=1, seed=3)
        message = await final_message(discord_server, record)
    second = ImagineBot(settings, guild_ready_timeout=0.05)
    async with running(second, discord_server.token, timeout=60):
        [upscale] = [i for i in custom_ids(message) if i.startswith("ib:u:")]
        click = await discord_server.click(discord_guild.id, channel_of(discord_guild), alice, message, upscale)
        answer = await discord_server.wait_for_response(click)
        assert answer.json["type"] == 4 and answer.files


async def test_moderators_may_cancel(bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    mod = discord_server.add_member(discord_guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    record = await imagine(discord_server, discord_guild, alice, prompt="a long job", steps=150, count=4)
    message = await queued_message(discord_server, record)
    [cancel_id] = [i for i in custom_ids(message) if i.startswith("ib:x:")]
    click = await discord_server.click(discord_guild.id, channel_of(discord_guild), mod, message, cancel_id)
    answer = await discord_server.wait_for_response(click)
    assert "Cancelling" in answer.json["data"]["content"]


async def test_an_expired_token_falls_back_to_a_channel_message(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    record = await imagine(discord_server, discord_guild, alice, prompt="a blue square", steps=40, count=2)
    await queued_message(discord_server, record)
    discord_server.expire_token(record.token)
    posted = await discord_server.wait_for(
        lambda c: c.method == "POST" and c.path == f"/channels/{channel_of(discord_guild)}/messages", timeout=60
    )
    assert f"<@{alice.user.id}>" in posted.json["content"] and posted.files
    assert any(i.startswith("ib:r:") for i in custom_ids(posted.response))


async def test_queue_history_and_cancel_commands(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    channel = channel_of(discord_guild)
    empty = await discord_server.slash(discord_guild.id, channel, alice, "cancel", {})
    assert "nothing queued" in (await discord_server.wait_for_response(empty)).json["data"]["content"]
    record = await imagine(discord_server, discord_guild, alice, prompt="a green star", steps=150, count=4, seed=11)
    path = original_path(discord_server, record)
    await queued_message(discord_server, record)
    bob = discord_server.add_member(discord_guild.id, name="bob")
    waiting = await imagine(discord_server, discord_guild, bob, prompt="a red moon", steps=150, count=4)
    await queued_message(discord_server, waiting)  # behind alice's running job
    queue = await discord_server.slash(discord_guild.id, channel, alice, "queue", {})
    answer = (await discord_server.wait_for_response(queue)).json["data"]
    assert answer["flags"] & 64 and "a green star" in answer["content"]
    assert "**This server: 1 waiting**" in answer["content"] and f"#1 · <@{bob.user.id}>" in answer["content"]
    assert answer["allowed_mentions"]["parse"] == []  # listing members does not ping them
    cancel = await discord_server.slash(discord_guild.id, channel, alice, "cancel", {})
    assert "Cancelling" in (await discord_server.wait_for_response(cancel)).json["data"]["content"]
    await discord_server.wait_for(
        lambda c: c.method == "PATCH" and c.path == path and "was cancelled" in str(c.json), timeout=60
    )
    history = await discord_server.slash(discord_guild.id, channel, alice, "history", {})
    text = (await discord_server.wait_for_response(history)).json["data"]["content"]
    assert "cancelled" in text and "seed `11`" in text


async def test_votes_one_per_member_can_move_and_rank_in_top(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice, bob = (discord_server.add_member(discord_guild.id, name=n) for n in ("alice", "bob"))
    record = await imagine(discord_server, discord_guild, alice, prompt="two foxes", count=2, seed=5)
    message = await final_message(discord_server, record)
    job_id = custom_ids(message)[0].split(":")[2]
    channel = channel_of(discord_guild)

    async def vote(user: Any, index: int) -> str:
        click = await discord_server.click(discord_guild.id, channel, user, message, f"ib:k:{job_id}:{index}")
        answer = await discord_server.wait_for_response(click)
        assert answer.json["type"] == 7  # the grid message itself is updated with the tally
        return str(answer.json["data"]["content"])

    assert "Votes: 1 ▸ 1" in await vote(alice, 0)
    assert "Votes: 1 ▸ 2" in await vote(bob, 0)
    assert "Votes: 1 ▸ 1 · 2 ▸ 1" in await vote(bob, 1)  # bob moved his vote
    assert "Votes: 1 ▸ 1 · 2 ▸ 1" in await vote(alice, 0)  # a second vote for the same image counts once
    top = await discord_server.slash(discord_guild.id, channel, bob, "top", {"period": "day"})
    text = (await discord_server.wait_for_response(top)).json["data"]["content"]
    assert text.startswith("1. **two foxes** — image") and "1 vote(s)" in text


async def test_delete_is_for_the_requester_or_a_moderator(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice, mallory = (discord_server.add_member(discord_guild.id, name=n) for n in ("alice", "mallory"))
    record = await imagine(discord_server, discord_guild, alice, prompt="a yellow star", count=1, seed=2)
    message = await final_message(discord_server, record)
    [delete_id] = [i for i in custom_ids(message) if i.startswith("ib:d:")]
    channel = channel_of(discord_guild)
    refused = await discord_server.click(discord_guild.id, channel, mallory, message, delete_id)
    answer = await discord_server.wait_for_response(refused)
    assert answer.json["data"]["flags"] & 64 and "can delete this" in answer.json["data"]["content"]
    accepted = await discord_server.click(discord_guild.id, channel, alice, message, delete_id)
    await discord_server.wait_for_response(accepted)
    await discord_server.wait_for(lambda c: c.method == "DELETE" and str(message["id"]) in c.path, timeout=10)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_variations_and_upscale_start_from_the_chosen_image(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice, bob = (discord_server.add_member(discord_guild.id, name=n) for n in ("alice", "bob"))
    channel = channel_of(discord_guild)
    cog = bot.get_cog("ImagineCog")
    assert isinstance(cog, ImagineCog)
    storage = cog.service.storage
    grid = await final_message(discord_server, await imagine(discord_server, discord_guild, alice,
                                                             prompt="a red circle", count=2, seed=7))  # fmt: skip
    source = job_of(grid)

    # V2 (anyone may): variations at the server's default strength, queued as bob's job, parent recorded.
    click = await discord_server.click(discord_guild.id, channel, bob, grid, f"ib:v:{source}:1")
    assert (await discord_server.wait_for_response(click)).json["type"] == 5
    varied = await final_message(discord_server, click)
    assert "variations (strong) of image 2" in varied["content"]
    job = await storage.get_job(job_of(varied))
    r = job.request
    assert (r.kind, r.source_job_id, r.source_index, r.parent_job_id) == (JobKind.VARY, source, 1, source)
    assert (r.strength, r.user_id, r.count) == (VARIATION_STRENGTH["strong"], str(bob.user.id), 2)
    assert r.seed != 7 and {f"ib:u:{job.id}:0", f"ib:v:{job.id}:1", f"ib:r:{job.id}"} <= set(custom_ids(varied))

    # Reroll of a variation: another variation of the same image, with a new seed.
    click = await discord_server.click(discord_guild.id, channel, alice, varied, f"ib:r:{job.id}")
    rerolled = await storage.get_job(job_of(await final_message(discord_server, click)))
    assert (rerolled.request.kind, rerolled.request.source_job_id, rerolled.request.source_index) == (
        JobKind.VARY, source, 1)  # fmt: skip
    assert rerolled.request.parent_job_id == job.id and rerolled.request.seed != r.seed

    # U1 then Vary (subtle) and Upscale x2 from the single image's buttons.
    click = await discord_server.click(discord_guild.id, channel, alice, grid, f"ib:u:{source}:0")
    await discord_server.wait_for_response(click)
    single = discord_server.original_message(click)
    assert single is not None
    click = await discord_server.click(discord_guild.id, channel, alice, single, f"ib:s:{source}:0")
    subtle = await final_message(discord_server, click)
    assert "variations (subtle) of image 1" in subtle["content"]
    assert (await storage.get_job(job_of(subtle))).request.strength == VARIATION_STRENGTH["subtle"]

    click = await discord_server.click(discord_guild.id, channel, alice, single, f"ib:z:{source}:0")
    upscaled = await final_message(discord_server, click)
    up = await storage.get_job(job_of(upscaled))
    assert "upscaled \u00d72 from image 1" in upscaled["content"]
    assert (up.request.kind, up.request.count, up.request.seed) == (JobKind.UPSCALE, 1, 7)  # image 1's own seed
    [attachment] = upscaled["attachments"]
    assert png_size(discord_server.attachment_bytes(attachment)) == (512, 512)
    # 512 is as large as the tiny model goes: no Upscale button under the result.
    assert custom_ids(upscaled) == [f"ib:s:{up.id}:0", f"ib:g:{up.id}:0", f"ib:d:{up.id}"]


async def test_a_variation_of_a_pruned_image_fails_with_a_reason(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    grid = await final_message(discord_server, await imagine(discord_server, discord_guild, alice,
                                                             prompt="a blue ring", count=1, seed=1))  # fmt: skip
    cog = bot.get_cog("ImagineCog")
    assert isinstance(cog, ImagineCog)
    for output in await cog.service.storage.outputs_for(job_of(grid)):
        os.unlink(output.path)  # e.g. an operator pruned old images
    click = await discord_server.click(discord_guild.id, channel_of(discord_guild), alice, grid,
                                       f"ib:v:{job_of(grid)}:0")  # fmt: skip
    path = original_path(discord_server, click)
    failed = await discord_server.wait_for(lambda c: c.method == "PATCH" and c.path == path and
                                           "could not be made" in str(c.json), timeout=60)  # fmt: skip
    assert "the image it starts from could not be read" in failed.json["content"]


async def test_progress_edits_are_throttled(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    record = await imagine(discord_server, discord_guild, alice, prompt="a slow sunset", steps=150, count=4)
    path = original_path(discord_server, record)
    assert "queued" in (await queued_message(discord_server, record))["content"]

    def progress_edits() -> list[Any]:
        return [c for c in discord_server.calls_to("PATCH", path) if " step " in str(c.json)]

    await discord_server.wait_for(lambda c: len(progress_edits()) >= 3, timeout=60)
    edits = progress_edits()
    steps = [int(str(e.json["content"]).rsplit("step ", 1)[1].split("/")[0]) for e in edits]
    assert steps == sorted(steps) and steps[0] >= 1 and str(edits[0].json["content"]).endswith("/150")
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(edits)]
    assert min(gaps) >= EDIT_INTERVAL * 0.9  # one edit per message per EDIT_INTERVAL at most
    cancel = await discord_server.slash(discord_guild.id, channel_of(discord_guild), alice, "cancel", {})
    await discord_server.wait_for_response(cancel)
    await discord_server.wait_for(lambda c: c.method == "PATCH" and c.path == path and "was cancelled" in str(c.json),
                                  timeout=60)  # fmt: skip
