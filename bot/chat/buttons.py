"""Persistent buttons under a result: U1-U4, Reroll, Vote 1-4, Delete, and Cancel while it runs.

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

ACTIONS = {"u": "upscale", "r": "reroll", "x": "cancel", "k": "vote", "d": "delete"}


TEMPLATE = r"ib:(?P<action>[urxkd]):(?P<job>[0-9a-z]+)(?::(?P<index>[0-3]))?"


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
    """Row 1: U buttons for the images that were allowed, then Reroll. Row 2: a vote per image."""
    view = discord.ui.View(timeout=None)
    for index in range(images):
        if index in allowed:
            view.add_item(JobButton("u", job_id, index, label=f"U{index + 1}"))
    view.add_item(JobButton("r", job_id, label="🔄 Reroll"))
    if len(allowed) > 1:  # nothing to choose between otherwise
        for index in allowed:
            button = JobButton("k", job_id, index, label=f"Vote {index + 1}")
            button.item.row = 1
            view.add_item(button)
    delete = JobButton("d", job_id, label="🗑 Delete")
    delete.item.row = 1
    view.add_item(delete)
    return view


def progress_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("x", job_id, label="Cancel"))
    return view
