"""/verify and the "Verify image" message menu: did this bot make that picture?

Both answer privately. The report says yes or "no evidence" (never "no": a heavily edited copy can
lose every mark), which evidence was found, and the job's public details: when, which model, and
whether it was this server. The prompt is shown only to this server's moderators, for its own jobs.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.imagine import may_moderate_here
from bot.service import ImagineService
from bot.verify import UnreadableImageError, Verifier, VerifyReport

logger = logging.getLogger(__name__)

MAX_VERIFY_BYTES = 25 * 1024 * 1024  # Discord's largest upload without boosts... and more than any output of ours
MAX_IMAGES_PER_MESSAGE = 4  # the menu checks at most this many attachments of one message
EVIDENCE_NAMES = {
    "c2pa": "Content Credentials (C2PA) signed by this bot",
    "signed-metadata": "this bot's signed metadata",
    "sha256": "byte-for-byte identical to a stored image",
    "watermark": "this bot's invisible watermark",
    "perceptual-hash": "looks like a stored image (perceptual hash)",
}


def report_text(report: VerifyReport, name: str, guild_id: str | None) -> str:
    """The private answer about one image: the verdict, the evidence, the job's public details."""
    if not report.ours:
        lines = [f"**{name}**: no evidence that this bot made it. That is not proof either way: a heavily "
                 "edited or re-drawn copy can lose every mark."]  # fmt: skip
        lines += [f"- {note}" for note in report.notes]
        return "\n".join(lines)
    kinds = list(dict.fromkeys(e.kind for e in report.evidence))
    lines = [f"**{name}**: made by this bot."]
    lines += [f"- {EVIDENCE_NAMES.get(kind, kind)}" for kind in kinds]
    job = report.job
    if job is not None:
        where = "this server" if job.guild_id == guild_id else "another server"
        image = f", image {job.index + 1}" if job.index is not None else ""
        lines.append(f"Job `{job.job_id}`{image} · {job.kind} · `{job.model}` · <t:{int(job.created_at)}:f> · {where}")
        if job.prompt is not None:
            lines.append(f"Prompt (moderators only): {job.prompt[:300]}")
    return "\n".join(lines)


class VerifyCog(commands.Cog):
    """/verify image: and the message menu "Verify image"."""

    def __init__(self, bot: commands.AutoShardedBot, service: ImagineService, verifier: Verifier) -> None:
        self.bot = bot
        self.service = service
        self.verifier = verifier
        self._menu = app_commands.ContextMenu(name="Verify image", callback=self.verify_message)
        self.bot.tree.add_command(self._menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self._menu.name, type=self._menu.type)

    @app_commands.command(name="verify")
    async def verify(self, interaction: discord.Interaction[Any], image: discord.Attachment) -> None:
        """Check whether this bot made an image, even after it was re-encoded or cropped.

        Args:
            image: The image to check (PNG, JPEG or WebP).
        """
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await self._check(interaction, image)
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    async def verify_message(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """The "Verify image" entry of a message's Apps menu: checks the message's image attachments."""
        images = [a for a in message.attachments if (a.content_type or "").startswith("image/")]
        if not images:
            await interaction.response.send_message("That message has no image attached.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        texts = [await self._check(interaction, a) for a in images[:MAX_IMAGES_PER_MESSAGE]]
        if len(images) > MAX_IMAGES_PER_MESSAGE:
            texts.append(f"(Checked the first {MAX_IMAGES_PER_MESSAGE} of {len(images)} images.)")
        await interaction.followup.send("\n\n".join(texts)[:2000], ephemeral=True,
                                        allowed_mentions=discord.AllowedMentions.none())  # fmt: skip

    async def _check(self, interaction: discord.Interaction[Any], attachment: discord.Attachment) -> str:
        name = discord.utils.escape_markdown(attachment.filename[:80])
        if attachment.size > MAX_VERIFY_BYTES:
            return f"**{name}**: too large to check ({attachment.size // 2**20} MiB; at most 25 MiB)."
        try:
            data = await attachment.read()
        except discord.HTTPException as exc:
            logger.warning("downloading %s for /verify failed: %s", attachment.url, exc)
            return f"**{name}**: could not be downloaded from Discord; try again."
        guild_id = str(interaction.guild_id) if interaction.guild_id is not None else None
        moderator_of = {guild_id} if guild_id is not None and await self._is_moderator(interaction, guild_id) else set()
        try:
            report = await self.verifier.verify(data, moderator_of=moderator_of)
        except UnreadableImageError as exc:
            return f"**{name}**: not an image this bot can read ({exc})."
        return report_text(report, name, guild_id)

    async def _is_moderator(self, interaction: discord.Interaction[Any], guild_id: str) -> bool:
        return may_moderate_here(interaction, await self.service.guild_config(guild_id))
