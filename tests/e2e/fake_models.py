"""The things a fake Discord knows about: users, roles, channels, members, guilds, and their wire shapes.

Each model renders itself as the JSON object Discord sends (``to_payload``), with the fields that
discord.py reads to build its cache. IDs are real snowflakes, so ``created_at`` works.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000


class Permission(enum.IntFlag):
    """Discord permission bits (the subset our bot and tests care about)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    MODERATE_MEMBERS = 1 << 40


# What Discord grants @everyone in a new server (the parts that matter for a bot's users).
DEFAULT_EVERYONE_PERMISSIONS = int(
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.CREATE_INSTANT_INVITE
)
# What an invite link with the bot scope typically asks for.
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | int(Permission.MANAGE_MESSAGES)
# Administrators and owners get every bit; Discord sends the full mask.
ALL_PERMISSIONS = (1 << 51) - 1


class Snowflakes:
    """Makes real snowflakes: milliseconds since the Discord epoch, a worker id, an increment.

    Ids never go back in time, so they sort in creation order as Discord's do.
    """

    def __init__(self) -> None:
        self._increment = itertools.count()
        self._last_ms = 0

    def next(self, *, shard: tuple[int, int] | None = None) -> int:
        """A new id; with ``shard=(shard_id, num_shards)``, one that lands on that shard (see :func:`shard_of`)."""
        ms = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, self._last_ms)
        if shard is not None:
            shard_id, num_shards = shard
            if not 0 <= shard_id < num_shards:
                raise ValueError(f"shard {shard_id} is not in 0..{num_shards - 1}")
            ms += (shard_id - ms) % num_shards  # a few milliseconds ahead, at most
        self._last_ms = ms
        return (ms << 22) | (1 << 17) | (next(self._increment) & 0xFFF)


def shard_of(guild_id: int, num_shards: int) -> int:
    """The shard whose connection carries a guild's events: Discord's ``(guild_id >> 22) % num_shards``."""
    return (guild_id >> 22) % num_shards


def iso_now() -> str:
    """A timestamp the way Discord writes it."""
    return datetime.now(UTC).isoformat()


@dataclass
class FakeUser:
    """A Discord user (people and the bot alike)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def to_payload(self) -> JSON:
        data: JSON = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "avatar_decoration_data": None,
            "public_flags": 0,
            "primary_guild": None,
            "collectibles": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class FakeRole:
    """A guild role; the guild's own id is the @everyone role."""

    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def to_payload(self) -> JSON:
        data: JSON = {
            "id": str(self.id),
            "name": self.name,
            "description": None,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class FakeChannel:
    """A guild text channel (type 0)."""

    id: int
    guild_id: int
    name: str
    position: int = 0
    type: int = 0
    topic: str | None = None
    nsfw: bool = False
    last_message_id: int | None = None

    def to_payload(self) -> JSON:
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "topic": self.topic,
            "nsfw": self.nsfw,
            "parent_id": None,
            "last_message_id": None if self.last_message_id is None else str(self.last_message_id),
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclass
class FakeMember:
    """A user's membership of one guild: roles (without @everyone), nickname, join time."""

    user: FakeUser
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    def to_payload(self) -> JSON:
        return {
            "user": self.user.to_payload(),
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self.role_ids],
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }


@dataclass
class FakeGuild:
    """A server with its roles, text channels and members."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    locale: str = "en-US"

    @property
    def everyone(self) -> FakeRole:
        return self.roles[self.id]

    @property
    def text_channels(self) -> list[FakeChannel]:
        return sorted(self.channels.values(), key=lambda c: c.position)

    def member(self, user_id: int) -> FakeMember:
        try:
            return self.members[user_id]
        except KeyError:
            raise ValueError(f"user {user_id} is not a member of guild {self.id}; add_member() first") from None

    def permissions_of(self, user_id: int) -> int:
        """Guild-level permissions: the owner and administrators get everything, others the OR of roles."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        value = self.everyone.permissions
        for role_id in self.member(user_id).role_ids:
            value |= self.roles[role_id].permissions
        if value & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return value

    def to_payload(self) -> JSON:
        """The REST guild object (``GET /guilds/{id}``)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "features": [],
            "roles": [r.to_payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "max_members": 500_000,
            "approximate_member_count": len(self.members),
            "approximate_presence_count": 0,
        }

    def to_gateway_payload(self) -> JSON:
        """The GUILD_CREATE object: the REST guild plus channels, members and the other cached lists."""
        data = self.to_payload()
        data.update(
            {
                "unavailable": False,
                "large": False,
                "joined_at": iso_now(),
                "member_count": len(self.members),
                "channels": [c.to_payload() for c in self.text_channels],
                "members": [m.to_payload() for m in self.members.values()],
                "threads": [],
                "presences": [],
                "voice_states": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        )
        return data
