"""Persistent buttons: U1-U4, V1-V4, Reroll, Vote 1-4 and Delete under a grid; Vary (subtle),
Vary (strong), Upscale x2 under a single image; Cancel while a job runs.

Persistent buttons need ``timeout=None`` and a stable ``custom_id`` (discord.py's persistent-view
example says so too); we use ``DynamicItem`` so the ``custom_id`` itself carries the job id and the
image index (``ib:<action>:<job>[:<index>]``), and a click after a restart still finds its job.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    from bot.chat.imagine import ImagineCog
    from bot.chat.moderation import ModerationCog

ACTIONS = {
    "u": "select",  # post one image of a grid alone, at full size
    "v": "vary",  # variations at the server's default strength
    "s": "vary subtly",
    "g": "vary strongly",
    "z": "upscale",
    "r": "reroll",
    "x": "cancel",
    "k": "vote",
    "d": "delete",
}


TEMPLATE = r"ib:(?P<action>[uvsgzrxkd]):(?P<job>[0-9a-z]+)(?::(?P<index>[0-3]))?"


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """A button that acts on one job (or one image of it)."""

    def __init__(self, action: str, job_id: str, index: int | None = None, *, label: str | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown button action {action!r}")
        custom_id = f"ib:{action}:{job_id}" + (f":{index}" if index is not None else "")
        style = discord.ButtonStyle.danger if action in ("x", "d") else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=label or action, style=style, custom_id=custom_id))
        self.action = action
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        index = match["index"]
        label = item.label if isinstance(item, discord.ui.Button) else None
        return cls(match["action"], match["job"], int(index) if index is not None else None, label=label)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog: ImagineCog | None = interaction.client.get_cog("ImagineCog")
        if cog is None:
            await interaction.response.send_message("The bot is still starting; try again shortly.", ephemeral=True)
            return
        await cog.on_button(interaction, self.action, self.job_id, self.index)


def result_view(job_id: str, images: int, *, allowed: list[int]) -> discord.ui.View:
    """Row 1: U per allowed image, then Reroll. Row 2: V per allowed image. Row 3: votes, Delete."""
    view = discord.ui.View(timeout=None)
    for index in allowed:
        view.add_item(JobButton("u", job_id, index, label=f"U{index + 1}"))
    view.add_item(JobButton("r", job_id, label="🔄 Reroll"))
    for index in allowed:
        view.add_item(_on_row(JobButton("v", job_id, index, label=f"V{index + 1}"), 1))
    if len(allowed) > 1:  # nothing to choose between otherwise
        for index in allowed:
            view.add_item(_on_row(JobButton("k", job_id, index, label=f"Vote {index + 1}"), 2))
    view.add_item(_on_row(JobButton("d", job_id, label="🗑 Delete"), 2))
    return view


def image_view(job_id: str, index: int, *, upscale: bool, delete: bool = False) -> discord.ui.View:
    """Under one image: Vary (subtle), Vary (strong), Upscale x2 where the model allows it."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("s", job_id, index, label="Vary (subtle)"))
    view.add_item(JobButton("g", job_id, index, label="Vary (strong)"))
    if upscale:
        view.add_item(JobButton("z", job_id, index, label="Upscale \u00d72"))
    if delete:
        view.add_item(JobButton("d", job_id, label="🗑 Delete"))
    return view


def _on_row(button: JobButton, row: int) -> JobButton:
    button.item.row = row
    return button


def progress_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("x", job_id, label="Cancel"))
    return view


# e reveal, a approve, j reject, t reject + strike, b ban from bot; p: the requester's "Request review".
_LABELS = {"e": "👁 Reveal", "a": "✅ Approve", "j": "❌ Reject", "t": "❌ Reject + strike", "b": "⛔ Ban from bot",
           "p": "Request review"}  # fmt: skip


class ReviewButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"mod:(?P<action>[eajtbp]):(?P<job>[0-9a-z]+)"
):
    """A button on a review card (or a block notice), persistent across restarts."""

    def __init__(self, action: str, job_id: str) -> None:
        style = {"a": discord.ButtonStyle.success, "j": discord.ButtonStyle.danger, "t": discord.ButtonStyle.danger,
                 "b": discord.ButtonStyle.danger}.get(action, discord.ButtonStyle.secondary)  # fmt: skip
        super().__init__(discord.ui.Button(label=_LABELS[action], style=style, custom_id=f"mod:{action}:{job_id}"))
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ReviewButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog: ModerationCog | None = interaction.client.get_cog("ModerationCog")
        if cog is None:
            await interaction.response.send_message("The bot is still starting; try again shortly.", ephemeral=True)
            return
        await cog.on_button(interaction, self.action, self.job_id)


def detached(view: discord.ui.View) -> discord.ui.View:
    """A view whose buttons are all dynamic items (dispatched by ``custom_id``), stopped before it is sent:
    discord.py then does not store it, nor start the 15-minute timeout it gives ephemeral views."""
    view.stop()
    return view


def card_view(job_id: str, *, appeal: bool) -> discord.ui.View:
    """Under a review card: Reveal (not for an appeal: nothing was stored), Approve, Reject, Reject + strike, Ban."""
    view = discord.ui.View(timeout=None)
    for action in "ajtb" if appeal else "eajtb":
        view.add_item(ReviewButton(action, job_id))
    return view


def appeal_view(job_id: str) -> discord.ui.View:
    """Under a block notice: the requester's "Request review"."""
    view = discord.ui.View(timeout=None)
    view.add_item(ReviewButton("p", job_id))
    return view
