"""Application command routes: bulk overwrite and list, global and per guild, with Discord's validation.

A PUT replaces the whole set; a command keeps its id across syncs while its name and type stay the
same, as on Discord. Invalid definitions fail the way Discord fails them (400, code 50035, errors
keyed by command index), so ``tree.sync()`` raises ``CommandSyncFailure`` here too.
"""

from __future__ import annotations

import re
from typing import Any

from tests.e2e.fake_models import JSON
from tests.e2e.fake_rest import Reply, RestRequest, Router
from tests.e2e.fake_state import DiscordError, DiscordState

_NAME = re.compile(r"^[-_'\w]{1,32}$")
_SUB_COMMAND, _SUB_COMMAND_GROUP = 1, 2
_MAX_OPTIONS = 25

Problem = tuple[tuple[str, ...], str, str]  # (path into the payload, error code, message)


def _option_problems(option: JSON, path: tuple[str, ...]) -> list[Problem]:
    problems = _name_problems(option, path)
    if not 1 <= len(option.get("description") or "") <= 100:
        problems.append(((*path, "description"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."))
    if not 1 <= int(option.get("type", 0)) <= 11:
        problems.append(((*path, "type"), "BASE_TYPE_CHOICES", "Value must be one of (1, ..., 11)."))
    if len(option.get("choices") or []) > _MAX_OPTIONS:
        problems.append(((*path, "choices"), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
    return problems + _options_problems(option.get("options") or [], path)


def _name_problems(item: JSON, path: tuple[str, ...]) -> list[Problem]:
    name = item.get("name") or ""
    if not _NAME.fullmatch(name) or name != name.lower():
        return [((*path, "name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")]
    return []


def _options_problems(options: list[JSON], path: tuple[str, ...]) -> list[Problem]:
    problems: list[Problem] = []
    if len(options) > _MAX_OPTIONS:
        problems.append(((*path, "options"), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."))
    seen_optional = False
    for index, option in enumerate(options):
        option_path = (*path, "options", str(index))
        problems += _option_problems(option, option_path)
        if option.get("type") in (_SUB_COMMAND, _SUB_COMMAND_GROUP):
            continue
        if option.get("required") and seen_optional:
            code = "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID"
            problems.append((option_path, code, "Required options must be placed before non-required options"))
        seen_optional = seen_optional or not option.get("required")
    names = [o.get("name") for o in options]
    if len(set(names)) != len(names):
        problems.append(((*path, "options"), "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Duplicate names"))
    return problems


def command_problems(command: JSON, index: int) -> list[Problem]:
    """What Discord would reject in one command definition of a bulk overwrite."""
    path = (str(index),)
    command_type = int(command.get("type", 1))
    if command_type == 1:
        problems = _name_problems(command, path)
    else:  # user and message (context menu) commands: any 1-32 characters, spaces and capitals included
        name = command.get("name") or ""
        problems = (
            []
            if 1 <= len(name) <= 32
            else [((*path, "name"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")]
        )
    description = command.get("description") or ""
    if command_type == 1 and not 1 <= len(description) <= 100:
        problems.append(((*path, "description"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."))
    if command_type != 1 and description:
        problems.append(((*path, "description"), "APPLICATION_COMMAND_INVALID_DESCRIPTION", "Must be empty."))
    return problems + _options_problems(command.get("options") or [], path)


def _form_errors(problems: list[Problem]) -> JSON:
    errors: JSON = {}
    for path, code, message in problems:
        node = errors
        for key in path:
            node = node.setdefault(key, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})
    return errors


class CommandRoutes:
    """``PUT``/``GET /applications/{app}/commands`` and ``/applications/{app}/guilds/{guild}/commands``."""

    def __init__(self, state: DiscordState) -> None:
        self._state = state

    def register(self, router: Router) -> None:
        router.add("GET", "/applications/{application_id}/commands", self.list_global)
        router.add("PUT", "/applications/{application_id}/commands", self.put_global)
        router.add("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self.list_guild)
        router.add("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self.put_guild)

    async def list_global(self, request: RestRequest) -> Reply:
        self._check_application(request)
        return Reply(body=self._state.global_commands)

    async def put_global(self, request: RestRequest) -> Reply:
        self._check_application(request)
        self._state.global_commands = self._overwrite(self._state.global_commands, request.json, guild_id=None)
        return Reply(body=self._state.global_commands)

    async def list_guild(self, request: RestRequest) -> Reply:
        self._check_application(request)
        guild_id = self._state.guild(request.snowflake("guild_id")).id
        return Reply(body=self._state.guild_commands.get(guild_id, []))

    async def put_guild(self, request: RestRequest) -> Reply:
        self._check_application(request)
        guild_id = self._state.guild(request.snowflake("guild_id")).id
        current = self._state.guild_commands.get(guild_id, [])
        self._state.guild_commands[guild_id] = self._overwrite(current, request.json, guild_id=guild_id)
        return Reply(body=self._state.guild_commands[guild_id])

    def _check_application(self, request: RestRequest) -> None:
        if request.snowflake("application_id") != self._state.application_id:
            raise DiscordError(403, 50001, "Missing Access")

    def _overwrite(self, current: list[JSON], payload: Any, *, guild_id: int | None) -> list[JSON]:
        if not isinstance(payload, list):
            raise DiscordError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "BASE_TYPE_ARRAY"}]})
        problems = [p for index, command in enumerate(payload) for p in command_problems(command, index)]
        keys = [(c.get("name"), int(c.get("type", 1))) for c in payload]
        if len(set(keys)) != len(keys):
            problems.append(((), "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique"))
        if problems:
            raise DiscordError(400, 50035, "Invalid Form Body", _form_errors(problems))
        ids = {(c["name"], c["type"]): c["id"] for c in current}
        return [self._stored(command, ids, guild_id) for command in payload]

    def _stored(self, command: JSON, ids: dict[tuple[str, int], str], guild_id: int | None) -> JSON:
        command_type = int(command.get("type", 1))
        stored: JSON = {
            "id": ids.get((command["name"], command_type)) or str(self._state.ids.next()),
            "application_id": str(self._state.application_id),
            "version": str(self._state.ids.next()),
            "type": command_type,
            "name": command["name"],
            "name_localizations": command.get("name_localizations"),
            "description": command.get("description", ""),
            "description_localizations": command.get("description_localizations"),
            "default_member_permissions": command.get("default_member_permissions"),
            "nsfw": command.get("nsfw", False),
            "contexts": command.get("contexts"),
            "integration_types": command.get("integration_types") or [0],
        }
        if command.get("options"):
            stored["options"] = command["options"]
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        else:
            stored["dm_permission"] = command.get("dm_permission", True)
        return stored
