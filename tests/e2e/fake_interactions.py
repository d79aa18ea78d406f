"""INTERACTION_CREATE payloads built the way Discord builds them.

Discord's client only lets a user send what the synced command allows, so the builder checks the
same: the command must be synced (its id goes into ``data.id``), options are typed from the synced
definition (string 3, integer 4, boolean 5, user 6, channel 7, role 8, number 10, attachment 11),
required ones must be there, choices and ranges hold. A click needs a component with that
``custom_id`` on the message. Misuse raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tests.e2e.fake_models import JSON, FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser
from tests.e2e.fake_state import DiscordState, InteractionRecord, Upload

OptionValue = str | int | float | bool | FakeUser | FakeMember | FakeChannel | FakeRole | tuple[str, bytes]
_Entity = FakeUser | FakeMember | FakeChannel | FakeRole
_SELECTS = {3, 5, 6, 7, 8}


def _snowflake_of(value: Any, kinds: tuple[type[_Entity], ...], what: str) -> int:
    if isinstance(value, kinds):
        entity: _Entity = value
        return entity.id
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected a {what} or its id, got {value!r}")


def _check_range(option: JSON, value: Any, measure: Callable[[Any], float]) -> None:
    low = option.get("min_value", option.get("min_length"))
    high = option.get("max_value", option.get("max_length"))
    size = measure(value)
    if (low is not None and size < low) or (high is not None and size > high):
        raise ValueError(f"option {option['name']}={value!r} is outside [{low}, {high}]")


def iter_components(components: Sequence[JSON]) -> Iterator[JSON]:
    """Every component of a message, depth first (action rows, sections, containers, accessories)."""
    for component in components:
        yield component
        yield from iter_components(component.get("components") or [])
        if "accessory" in component:
            yield from iter_components([component["accessory"]])


class InteractionBuilder:
    """Builds interaction payloads for one :class:`DiscordState`."""

    def __init__(self, state: DiscordState) -> None:
        self._state = state

    def slash(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        name: str,
        options: Mapping[str, OptionValue] | None = None,
        subcommand: str | None = None,
    ) -> InteractionRecord:
        """A chat-input command (type 2); ``subcommand`` is ``"sub"`` or ``"group sub"``."""
        guild = self._state.guild(guild_id)
        command = self._synced_command(guild_id, name)
        declared, wrappers = self._leaf(command, subcommand.split() if subcommand else [])
        resolved: JSON = {}
        encoded = self._encode_options(guild, channel_id, declared, dict(options or {}), resolved)
        for option_type, option_name in reversed(wrappers):
            encoded = [{"type": option_type, "name": option_name, "options": encoded}]
        data: JSON = {"id": command["id"], "name": command["name"], "type": 1}
        if encoded:
            data["options"] = encoded
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return self._record(2, guild, channel_id, user_id, data)

    def message_command(
        self, guild_id: int, channel_id: int, user_id: int, name: str, message: JSON
    ) -> InteractionRecord:
        """A message context-menu command (application command type 3) run on ``message``."""
        guild = self._state.guild(guild_id)
        if message["channel_id"] != str(channel_id):
            raise ValueError(f"message {message['id']} is in channel {message['channel_id']}, not {channel_id}")
        command = self._synced_command(guild_id, name, command_type=3)
        data: JSON = {"id": command["id"], "name": command["name"], "type": 3, "target_id": str(message["id"]),
                      "resolved": {"messages": {str(message["id"]): copy.deepcopy(message)}}}  # fmt: skip
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return self._record(2, guild, channel_id, user_id, data)

    def click(
        self,
        guild_id: int,
        channel_id: int,
        user_id: int,
        message: JSON,
        custom_id: str,
        values: Sequence[str] | None = None,
    ) -> InteractionRecord:
        """A message component interaction (type 3) on ``message``'s component with ``custom_id``."""
        guild = self._state.guild(guild_id)
        if message["channel_id"] != str(channel_id):
            raise ValueError(f"message {message['id']} is in channel {message['channel_id']}, not {channel_id}")
        component = next((c for c in iter_components(message["components"]) if c.get("custom_id") == custom_id), None)
        if component is None:
            raise ValueError(f"message {message['id']} has no component with custom_id {custom_id!r}")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord would not let anyone click it")
        data: JSON = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] in _SELECTS:
            data["values"] = list(values or [])
        return self._record(3, guild, channel_id, user_id, data, message=message)

    # -- commands and options ----------------------------------------------------------------

    def _synced_command(self, guild_id: int, name: str, *, command_type: int = 1) -> JSON:
        for command in [*self._state.guild_commands.get(guild_id, []), *self._state.global_commands]:
            if command["name"] == name and command["type"] == command_type:
                return command
        raise ValueError(f"command {name!r} (type {command_type}) is not synced to guild {guild_id} nor globally; "
                         "sync the command tree first")  # fmt: skip

    @staticmethod
    def _leaf(command: JSON, path: list[str]) -> tuple[list[JSON], list[tuple[int, str]]]:
        declared: list[JSON] = command.get("options") or []
        wrappers = []
        for part in path:
            found = next((o for o in declared if o["name"] == part and o["type"] in (1, 2)), None)
            if found is None:
                raise ValueError(f"/{command['name']} has no subcommand or group {part!r}")
            wrappers.append((int(found["type"]), part))
            declared = found.get("options") or []
        if any(o["type"] in (1, 2) for o in declared):
            raise ValueError(f"/{command['name']} {' '.join(path)} needs a subcommand")
        return declared, wrappers

    def _encode_options(
        self, guild: FakeGuild, channel_id: int, declared: list[JSON], values: dict[str, Any], resolved: JSON
    ) -> list[JSON]:
        by_name = {o["name"]: o for o in declared}
        if extra := sorted(set(values) - set(by_name)):
            raise ValueError(f"no such option(s): {extra}; declared: {sorted(by_name)}")
        if missing := [o["name"] for o in declared if o.get("required") and o["name"] not in values]:
            raise ValueError(f"required option(s) missing: {missing}")
        encoded = []
        for name, value in values.items():
            option = by_name[name]
            wire = self._encode_value(guild, channel_id, option, value, resolved)
            choices = [c["value"] for c in option.get("choices") or []]
            if choices and wire not in choices:
                raise ValueError(f"option {name}={value!r} is not one of the choices {choices}")
            encoded.append({"name": name, "type": option["type"], "value": wire})
        return encoded

    def _encode_value(self, guild: FakeGuild, channel_id: int, option: JSON, value: Any, resolved: JSON) -> Any:
        option_type = option["type"]
        if option_type == 3 and isinstance(value, str):
            _check_range(option, value, len)
            return value
        if option_type == 4 and isinstance(value, int) and not isinstance(value, bool):
            _check_range(option, value, float)
            return value
        if option_type == 10 and isinstance(value, int | float) and not isinstance(value, bool):
            _check_range(option, value, float)
            return value
        if option_type == 5 and isinstance(value, bool):
            return value
        if option_type in (6, 7, 8, 9):
            return str(self._resolve_entity(guild, option_type, value, resolved))
        if option_type == 11 and isinstance(value, tuple):
            return self._resolve_attachment(channel_id, value, resolved)
        raise ValueError(f"option {option['name']} has type {option_type}; {value!r} does not fit")

    def _resolve_entity(self, guild: FakeGuild, option_type: int, value: Any, resolved: JSON) -> int:
        if option_type == 7:
            channel_id = _snowflake_of(value, (FakeChannel,), "channel")
            channel = self._state.channel(channel_id).to_payload() | {"permissions": str(2**51 - 1)}
            resolved.setdefault("channels", {})[str(channel_id)] = channel
            return channel_id
        if option_type == 8 or (option_type == 9 and isinstance(value, FakeRole)):
            role_id = _snowflake_of(value, (FakeRole,), "role")
            resolved.setdefault("roles", {})[str(role_id)] = guild.roles[role_id].to_payload()
            return role_id
        user_id = _snowflake_of(value, (FakeUser, FakeMember), "user")
        resolved.setdefault("users", {})[str(user_id)] = self._state.users[user_id].to_payload()
        if user_id in guild.members:
            member = guild.members[user_id].to_payload() | {"permissions": str(guild.permissions_of(user_id))}
            del member["user"]
            resolved.setdefault("members", {})[str(user_id)] = member
        return user_id

    def _resolve_attachment(self, channel_id: int, value: tuple[str, bytes], resolved: JSON) -> str:
        filename, data = value
        attachment = self._state.store_file(channel_id, Upload("files[0]", filename, "", data), {}, ephemeral=True)
        resolved.setdefault("attachments", {})[attachment["id"]] = attachment
        return str(attachment["id"])

    # -- the envelope ------------------------------------------------------------------------

    def _record(
        self,
        interaction_type: int,
        guild: FakeGuild,
        channel_id: int,
        user_id: int,
        data: JSON,
        *,
        message: JSON | None = None,
    ) -> InteractionRecord:
        channel = self._state.channel(channel_id)
        member = guild.member(user_id)
        interaction_id = self._state.ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self._state.application_id),
            "type": interaction_type,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
            "channel_id": str(channel.id),
            "channel": channel.to_payload(),
            "member": member.to_payload() | {"permissions": str(guild.permissions_of(user_id))},
            "token": token,
            "version": 1,
            "app_permissions": str(guild.permissions_of(self._state.bot_user.id)),
            "locale": "en-US",
            "guild_locale": guild.locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": self._state.attachment_size_limit,
        }
        if message is not None:
            payload["message"] = copy.deepcopy(message)
        return InteractionRecord(
            id=interaction_id,
            token=token,
            type=interaction_type,
            guild_id=guild.id,
            channel_id=channel.id,
            user_id=user_id,
            payload=payload,
            message_id=None if message is None else int(message["id"]),
        )
