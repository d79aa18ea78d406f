"""What the fake Discord stores: guilds, users, messages, files, commands and interactions.

Both halves of the fake (REST and gateway) read and write one ``DiscordState``; message objects are
built here so that every route answers with the same realistic shape.
"""

from __future__ import annotations

import mimetypes
import re
import struct
from dataclasses import dataclass, field

from tests.e2e.fake_models import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    JSON,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Snowflakes,
    iso_now,
)

EPHEMERAL = 1 << 6  # message flag
LOADING = 1 << 7  # message flag: the "Bot is thinking..." placeholder of a deferred response
_SUPPRESS_EMBEDS = 1 << 2
_COMPONENTS_V2 = 1 << 15
_FILE_FIELD = re.compile(r"files\[(\d+)\]")
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # bytes per file in a server without boosts (Discord's default)
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)  # GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT
# Application flags saying which privileged intents the developer portal enabled ("limited": <100 guilds).
_LIMITED_FLAGS = {1 << 8: 1 << 13, 1 << 1: 1 << 15, 1 << 15: 1 << 19}


class DiscordError(Exception):
    """An error the way Discord answers it: an HTTP status and a JSON ``{code, message}`` body."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def to_payload(self) -> JSON:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def unknown(what: str, code: int) -> DiscordError:
    return DiscordError(404, code, f"Unknown {what}")


def entity_too_large() -> DiscordError:
    """What Discord answers when an uploaded file is over the context's attachment size limit."""
    return DiscordError(413, 40005, "Request entity too large")


@dataclass(frozen=True)
class Upload:
    """One ``files[n]`` part of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def index(self) -> int | None:
        match = _FILE_FIELD.fullmatch(self.field)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class InteractionRecord:
    """An interaction the fake dispatched, as the bot received it.

    Attributes:
        id: the interaction id (``/interactions/{id}/{token}/callback``).
        token: the interaction token (``/webhooks/{application_id}/{token}/...``).
        type: 2 application command, 3 message component.
        guild_id: where it happened.
        channel_id: where it happened.
        user_id: who did it.
        payload: the INTERACTION_CREATE data exactly as dispatched.
        message_id: the message whose component was clicked (type 3 only).
    """

    id: int
    token: str
    type: int
    guild_id: int
    channel_id: int
    user_id: int
    payload: JSON
    message_id: int | None = None


@dataclass
class InteractionState:
    """What became of an interaction: Discord's bookkeeping behind the callback and webhook routes."""

    record: InteractionRecord
    created_at: float
    response_type: int | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    token_expired: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _content_type(filename: str, data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


class DiscordState:
    """Everything the fake Discord knows. One bot application; any number of guilds.

    Args:
        token: the bot token that REST and IDENTIFY must present.
        bot_name: the bot user's username.
        privileged_intents: the privileged intents enabled "in the developer portal"; IDENTIFY asking
            for others is closed with 4014, as Discord does.
        attachment_size_limit: bytes allowed per uploaded file; sent as interactions'
            ``attachment_size_limit``, and larger uploads are refused with 413 ``40005``.
        shards: the shard count ``GET /gateway/bot`` recommends (Discord bases it on the guild count).
    """

    def __init__(
        self,
        *,
        token: str,
        bot_name: str,
        privileged_intents: int = 0,
        attachment_size_limit: int = ATTACHMENT_SIZE_LIMIT,
        shards: int = 1,
    ) -> None:
        self.ids = Snowflakes()
        self.token = token
        self.privileged_intents = privileged_intents
        self.attachment_size_limit = attachment_size_limit
        self.recommended_shards = shards
        # Since 2021 a bot user's id is its application's id.
        self.application_id = self.ids.next()
        self.bot_user = FakeUser(id=self.application_id, username=bot_name, bot=True)
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.app_owner = self.add_user("developer")
        self.guilds: dict[int, FakeGuild] = {}
        self.messages: dict[int, JSON] = {}
        self.files: dict[int, tuple[str, str, bytes]] = {}  # attachment id -> (filename, content type, bytes)
        self.global_commands: list[JSON] = []
        self.guild_commands: dict[int, list[JSON]] = {}
        self.interactions: dict[int, InteractionState] = {}
        self.tokens: dict[str, int] = {}  # interaction token -> interaction id
        self.base_url = ""  # set when the server is listening; attachment URLs point back at it

    @property
    def application_flags(self) -> int:
        return sum(flag for intent, flag in _LIMITED_FLAGS.items() if self.privileged_intents & intent)

    # -- directory ---------------------------------------------------------------------------

    def guild(self, guild_id: int) -> FakeGuild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise unknown("Guild", 10004) from None

    def channel(self, channel_id: int) -> FakeChannel:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild.channels[channel_id]
        raise unknown("Channel", 10003)

    def add_guild(
        self, name: str, *, owner_name: str, bot_permissions: int, shard: tuple[int, int] | None = None
    ) -> FakeGuild:
        guild_id = self.ids.next(shard=shard)
        owner = self.add_user(owner_name)
        guild = FakeGuild(id=guild_id, name=name, owner_id=owner.id)
        guild.roles[guild_id] = FakeRole(id=guild_id, name="@everyone", permissions=DEFAULT_EVERYONE_PERMISSIONS)
        # Inviting a bot creates its managed role with the permissions the invite asked for.
        bot_role = FakeRole(
            id=self.ids.next(),
            name=self.bot_user.username,
            permissions=bot_permissions or DEFAULT_BOT_PERMISSIONS,
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[owner.id] = FakeMember(user=owner, guild_id=guild_id)
        guild.members[self.bot_user.id] = FakeMember(user=self.bot_user, guild_id=guild_id, role_ids=[bot_role.id])
        self.guilds[guild_id] = guild
        self.add_channel(guild_id, "general")
        return guild

    def add_user(self, name: str, user_id: int | None = None) -> FakeUser:
        user = FakeUser(id=user_id or self.ids.next(), username=name, global_name=name.title())
        self.users[user.id] = user
        return user

    def add_channel(self, guild_id: int, name: str) -> FakeChannel:
        guild = self.guild(guild_id)
        channel = FakeChannel(id=self.ids.next(), guild_id=guild_id, name=name, position=len(guild.channels))
        guild.channels[channel.id] = channel
        return channel

    def add_role(self, guild_id: int, name: str, permissions: int) -> FakeRole:
        guild = self.guild(guild_id)
        role = FakeRole(id=self.ids.next(), name=name, permissions=permissions, position=len(guild.roles))
        guild.roles[role.id] = role
        return role

    # -- messages ----------------------------------------------------------------------------

    def create_message(
        self,
        channel_id: int,
        payload: JSON,
        uploads: list[Upload],
        *,
        message_type: int = 0,
        extra_flags: int = 0,
        interaction: InteractionRecord | None = None,
    ) -> JSON:
        """Store a new message from a create-message body (``content``, ``embeds``, ``components``...)."""
        message_id = self.ids.next()
        flags = (int(payload.get("flags") or 0) & ~LOADING) | extra_flags
        message: JSON = {
            "id": str(message_id),
            "type": message_type,
            "channel_id": str(channel_id),
            "author": self.bot_user.to_payload(),
            "content": payload.get("content") or "",
            "embeds": [],
            "components": [],
            "attachments": [],
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": bool(payload.get("tts", False)),
            "timestamp": iso_now(),
            "edited_timestamp": None,
            "flags": flags,
        }
        if "nonce" in payload:
            message["nonce"] = payload["nonce"]
        if interaction is not None:
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            message["interaction_metadata"] = self._interaction_metadata(interaction)
        self._apply_edit(message, payload, uploads, edited=False)
        self.messages[message_id] = message
        channel = self._channel_or_none(channel_id)
        if channel is not None and not flags & EPHEMERAL:
            channel.last_message_id = message_id
        return message

    def edit_message(self, message_id: int, payload: JSON, uploads: list[Upload]) -> JSON:
        message = self.message(message_id)
        was_loading = bool(message["flags"] & LOADING)
        if was_loading:
            # The first edit of a deferred response replaces the placeholder; it is not an "edit".
            message["flags"] &= ~LOADING
        self._apply_edit(message, payload, uploads, edited=not was_loading)
        return message

    def message(self, message_id: int) -> JSON:
        try:
            return self.messages[message_id]
        except KeyError:
            raise unknown("Message", 10008) from None

    def delete_message(self, message_id: int) -> JSON:
        message = self.message(message_id)
        del self.messages[message_id]
        return message

    def _apply_edit(self, message: JSON, payload: JSON, uploads: list[Upload], *, edited: bool) -> None:
        if "content" in payload:
            message["content"] = payload["content"] or ""
        if "embeds" in payload:
            message["embeds"] = [{"type": "rich", **e} for e in payload["embeds"] or []]
        if "components" in payload:
            message["components"] = payload["components"] or []
        if "flags" in payload and payload["flags"] is not None:
            # Only SUPPRESS_EMBEDS and the components-v2 flag can change after creation; keep the rest.
            mutable = _SUPPRESS_EMBEDS | _COMPONENTS_V2
            message["flags"] = (message["flags"] & ~mutable) | (int(payload["flags"]) & mutable)
        ephemeral = bool(message["flags"] & EPHEMERAL)
        attachments = self._attachments(int(message["channel_id"]), payload, uploads, message["attachments"], ephemeral)
        if attachments is not None:
            message["attachments"] = attachments
        if edited:
            message["edited_timestamp"] = iso_now()

    def _attachments(
        self, channel_id: int, payload: JSON, uploads: list[Upload], existing: list[JSON], ephemeral: bool
    ) -> list[JSON] | None:
        """The message's attachments after this request, or None when it does not change them.

        ``attachments`` entries with a small ``id`` refer to ``files[id]`` of this request; entries
        with a snowflake keep an existing attachment; existing ones not listed are removed.
        """
        by_index = {u.index if u.index is not None else i: u for i, u in enumerate(uploads)}
        entries = payload.get("attachments")
        if entries is None:
            if not uploads:
                return None
            return existing + [self.store_file(channel_id, u, {}, ephemeral=ephemeral) for u in uploads]
        kept = {a["id"]: a for a in existing}
        result = []
        for entry in entries:
            key = int(entry["id"])
            if key in by_index:
                result.append(self.store_file(channel_id, by_index[key], entry, ephemeral=ephemeral))
            elif str(key) in kept:
                result.append(kept[str(key)])
            else:
                raise DiscordError(400, 50035, "Invalid Form Body", {"attachments": {"_errors": [{"code": "UNKNOWN"}]}})
        return result

    def store_file(self, channel_id: int, upload: Upload, entry: JSON, *, ephemeral: bool) -> JSON:
        """Keep an uploaded file and describe it as an attachment served by the fake CDN."""
        attachment_id = self.ids.next()
        filename = entry.get("filename") or upload.filename
        content_type = _content_type(filename, upload.data)
        self.files[attachment_id] = (filename, content_type, upload.data)
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{filename}"
        attachment: JSON = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }
        size = _image_size(upload.data)
        if size is not None:
            attachment["width"], attachment["height"] = size
        if entry.get("description"):
            attachment["description"] = entry["description"]
        if ephemeral:
            attachment["ephemeral"] = True
        return attachment

    def _channel_or_none(self, channel_id: int) -> FakeChannel | None:
        try:
            return self.channel(channel_id)
        except DiscordError:
            return None

    def _interaction_metadata(self, record: InteractionRecord) -> JSON:
        metadata: JSON = {
            "id": str(record.id),
            "type": record.type,
            "user": self.users[record.user_id].to_payload(),
            "authorizing_integration_owners": {"0": str(record.guild_id)},
        }
        if record.type == 2:
            metadata["name"] = record.payload["data"]["name"]
        if record.message_id is not None:
            metadata["interacted_message_id"] = str(record.message_id)
        return metadata

    # -- interactions ------------------------------------------------------------------------

    def interaction_by_token(self, token: str) -> InteractionState:
        """The live interaction a webhook token belongs to; 401 50027 like Discord when expired or unknown."""
        state = self.interactions.get(self.tokens.get(token, 0))
        if state is None or state.token_expired:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return state

    def guild_member(self, guild_id: int, user_id: int) -> FakeMember:
        guild = self.guild(guild_id)
        if user_id not in guild.members:
            raise unknown("Member", 10007)
        return guild.members[user_id]
