"""Per-server configuration (``/settings``): a frozen :class:`GuildConfig` and the rows behind it.

A server's admins choose where /imagine works, per-user limits and a cooldown, a queue cap, the
default and allowed models, an NSFW policy per channel, where flagged images are reviewed and by
which role, the safety strictness and how far variations stray. They may only *tighten* what the
operator allows (:class:`bot.config.Settings`): the per-user and queue caps are bounded by
``IMAGINEBOT_PER_USER_CAP`` and ``IMAGINEBOT_PER_GUILD_QUEUE_CAP``, and models are chosen among
``Settings.available_models``. Explicit content is never allowed anywhere; a channel's policy only
decides whether *suggestive* content may pass there, and only Discord's age-restricted flag opens
that door.

Each setting is one ``guild_settings`` row (key -> JSON), so changing one never rewrites another
(the service already reads ``strictness`` this way). :class:`GuildConfigStore` validates every change,
raising :class:`~bot.errors.InvalidSettingError` with a short message for the admin, and writes an
audit entry (actor, key, old and new value) for each row it changes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from bot.config import Settings
from bot.errors import InvalidSettingError
from bot.storage import JSONLike, JSONValue, Storage
from safety.prompt_filter import PromptCategory, PromptRules
from safety.verdict import STRICTNESS

logger = logging.getLogger(__name__)

MAX_COOLDOWN = 24 * 3600  # a day between requests is the slowest pace anyone has asked for
MAX_CHANNELS = 25  # allowed channels, and channels with their own NSFW policy: `/settings show` fits one message
VARIATION_MODES = ("subtle", "strong")
MAX_BLOCKLIST = 200  # terms per server: each /imagine checks them all
MAX_TERM_CHARS = 60
MAX_STRIKES = 20
MAX_STRIKE_WINDOW_HOURS = 365 * 24
MAX_BAN_HOURS = 365 * 24
# Categories a server may add its own terms to (protected people are added with /mod protect).
BLOCKLIST_CATEGORIES = tuple(c.value for c in PromptCategory if c is not PromptCategory.PROTECTED_PERSON)
SETTING_CHANGED = "setting_changed"  # the audit action of every change


class NsfwPolicy(enum.StrEnum):
    """What a channel allows beyond safe content. Explicit content is never allowed anywhere."""

    STRICT = "strict"  # no suggestive content, even in an age-restricted channel
    SUGGESTIVE = "suggestive"  # suggestive (never explicit) content; only while the channel is age-restricted


def _frozen_policies(policies: Mapping[int, NsfwPolicy]) -> Mapping[int, NsfwPolicy]:
    return MappingProxyType(dict(policies))


@dataclass(frozen=True)
class GuildConfig:
    """One server's settings, with the operator's defaults filled in. Build it with :meth:`defaults`
    or :meth:`GuildConfigStore.load`.

    Attributes:
        per_user_cap: most jobs one member may have queued or running in this server.
        queue_cap: most jobs this server may have queued.
        default_model: the model /imagine uses when none is chosen.
        allowed_models: the models members may choose (always includes ``default_model``).
        strictness: the safety level (one of ``safety.verdict.STRICTNESS``).
        allowed_channels: channel ids where /imagine works; empty means everywhere.
        cooldown_seconds: least time between one member's accepted jobs; 0 = none.
        nsfw_policies: channel id -> policy; a channel without one allows suggestive content only if
            it is age-restricted.
        review_channel: where moderators review flagged images; None = they wait in the queue.
        moderator_role: a role whose members may moderate jobs (besides Manage Messages).
        variation_mode: ``"subtle"`` or ``"strong"`` (how far V1-V4 stray from the image).
        credentials_personal: put the prompt in the images' Content Credentials (C2PA); off by
            default, so a manifest carries no personal data.
        strike_limit: strikes within ``strike_window_hours`` that ban a member from the bot; 0 = never.
        strike_window_hours: how far back strikes count.
        strike_ban_hours: how long that ban lasts (a cooldown from the bot); 0 = until a moderator lifts it.
        blocklist: this server's own prompt terms, by prompt category (added to the filter's lists).
    """

    per_user_cap: int
    queue_cap: int
    default_model: str
    allowed_models: tuple[str, ...]
    strictness: str
    allowed_channels: frozenset[int] = frozenset()
    cooldown_seconds: int = 0
    nsfw_policies: Mapping[int, NsfwPolicy] = field(default_factory=dict, hash=False)
    review_channel: int | None = None
    moderator_role: int | None = None
    variation_mode: str = "strong"
    credentials_personal: bool = False
    strike_limit: int = 3
    strike_window_hours: int = 30 * 24
    strike_ban_hours: int = 7 * 24
    blocklist: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nsfw_policies", _frozen_policies(self.nsfw_policies))
        object.__setattr__(self, "blocklist", MappingProxyType({c: tuple(t) for c, t in self.blocklist.items() if t}))

    @property
    def prompt_additions(self) -> dict[PromptCategory, tuple[str, ...]]:
        """The blocklist as the prompt filter takes it."""
        return {PromptCategory(c): terms for c, terms in self.blocklist.items()}

    @classmethod
    def defaults(cls, settings: Settings) -> GuildConfig:
        """What a server that never ran /settings gets: the operator's limits and models."""
        return cls(
            per_user_cap=settings.per_user_cap,
            queue_cap=settings.per_guild_queue_cap,
            default_model=settings.model,
            allowed_models=settings.available_models,
            strictness=settings.strictness,
        )

    def allows_channel(self, *channel_ids: int | None) -> bool:
        """True if /imagine works in one of ``channel_ids`` (a thread passes its own id and its parent's)."""
        return not self.allowed_channels or any(c in self.allowed_channels for c in channel_ids)

    def allows_suggestive(self, channel_id: int | None, age_restricted: bool) -> bool:
        """Whether suggestive (never explicit) content may pass in this channel.

        Only an age-restricted channel ever allows it, and a ``strict`` policy takes that away.
        """
        if not age_restricted:
            return False
        return channel_id is None or self.nsfw_policies.get(channel_id) is not NsfwPolicy.STRICT

    def is_moderator(self, role_ids: Iterable[int]) -> bool:
        """True if one of ``role_ids`` is this server's moderator role."""
        return self.moderator_role is not None and self.moderator_role in set(role_ids)


# --- rows <-> values ------------------------------------------------------------------------------

# Each setting's row: how a config value is written, and how a stored value is read back
# (raising ValueError/TypeError on a value this code cannot use).
_Codec = tuple[Callable[[GuildConfig], JSONLike], Callable[[JSONValue], object]]


def _as_int(value: JSONValue) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{value!r} is not an integer")
    return int(value)


def _as_bool(value: JSONValue) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not a boolean")
    return value


def _as_id(value: JSONValue) -> int | None:
    return None if value is None else _as_int(value)


def _as_str(value: JSONValue) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _as_list(value: JSONValue) -> list[JSONValue]:
    if not isinstance(value, list):
        raise TypeError(f"{value!r} is not a list")
    return value


def _as_policies(value: JSONValue) -> dict[int, NsfwPolicy]:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not an object")
    return {int(channel): NsfwPolicy(_as_str(policy)) for channel, policy in value.items()}


def _as_blocklist(value: JSONValue) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not an object")
    lists = {_as_str(c): tuple(_as_str(t) for t in _as_list(terms)) for c, terms in value.items()}
    PromptRules(additions={PromptCategory(c): t for c, t in lists.items()})  # validates (ValueError)
    return lists


def _id_text(value: int | None) -> str | None:
    return None if value is None else str(value)  # snowflakes as text: JSON readers may use doubles


_CODECS: dict[str, _Codec] = {
    "allowed_channels": (lambda c: sorted(str(i) for i in c.allowed_channels),
                         lambda v: frozenset(_as_int(i) for i in _as_list(v))),
    "per_user_cap": (lambda c: c.per_user_cap, _as_int),
    "cooldown_seconds": (lambda c: c.cooldown_seconds, _as_int),
    "queue_cap": (lambda c: c.queue_cap, _as_int),
    "default_model": (lambda c: c.default_model, _as_str),
    "allowed_models": (lambda c: list(c.allowed_models), lambda v: tuple(_as_str(m) for m in _as_list(v))),
    "nsfw_policies": (lambda c: {str(k): p.value for k, p in sorted(c.nsfw_policies.items())}, _as_policies),
    "review_channel": (lambda c: _id_text(c.review_channel), _as_id),
    "moderator_role": (lambda c: _id_text(c.moderator_role), _as_id),
    "strictness": (lambda c: c.strictness, _as_str),
    "variation_mode": (lambda c: c.variation_mode, _as_str),
    "credentials_personal": (lambda c: c.credentials_personal, _as_bool),
    "strike_limit": (lambda c: c.strike_limit, _as_int),
    "strike_window_hours": (lambda c: c.strike_window_hours, _as_int),
    "strike_ban_hours": (lambda c: c.strike_ban_hours, _as_int),
    "blocklist": (lambda c: {k: sorted(v) for k, v in sorted(c.blocklist.items())}, _as_blocklist),
}  # fmt: skip


def _from_rows(rows: Mapping[str, JSONValue], settings: Settings) -> GuildConfig:
    """A config from stored rows. A row this code cannot use is skipped (and logged), and values the
    operator has since made unavailable give way to the operator's limits: those always win."""
    base = GuildConfig.defaults(settings)
    values: dict[str, object] = {}
    for key, (_, read) in _CODECS.items():
        if key in rows:
            try:
                values[key] = read(rows[key])
            except (TypeError, ValueError) as exc:
                logger.warning("ignoring stored guild setting %s=%r: %s", key, rows[key], exc)
    config = replace(base, **values)  # type: ignore[arg-type]  # keys and types come from _CODECS
    available = settings.available_models
    allowed = tuple(m for m in config.allowed_models if m in available) or available
    default = config.default_model if config.default_model in allowed else allowed[0]
    return replace(
        config,
        per_user_cap=max(1, min(config.per_user_cap, settings.per_user_cap)),
        queue_cap=max(1, min(config.queue_cap, settings.per_guild_queue_cap)),
        cooldown_seconds=max(0, min(config.cooldown_seconds, MAX_COOLDOWN)),
        allowed_models=allowed,
        default_model=default,
        strictness=config.strictness if config.strictness in STRICTNESS else base.strictness,
        variation_mode=config.variation_mode if config.variation_mode in VARIATION_MODES else base.variation_mode,
        strike_limit=max(0, min(config.strike_limit, MAX_STRIKES)),
        strike_window_hours=max(1, min(config.strike_window_hours, MAX_STRIKE_WINDOW_HOURS)),
        strike_ban_hours=max(0, min(config.strike_ban_hours, MAX_BAN_HOURS)),
    )


# --- validated changes ----------------------------------------------------------------------------


CACHE_SECONDS = 5.0
MAX_CACHED = 10_000
_clock = time.monotonic  # the cache's clock (tests move it)


class GuildConfigStore:
    """Typed access to the ``guild_settings`` rows: load a server's config, change it one setting at a time.

    Every setter validates, writes only the rows that change, audits each change (actor, key, old and
    new value) and returns the new config. An invalid value raises :class:`InvalidSettingError`
    and writes nothing.

    Loaded configs are cached for :data:`CACHE_SECONDS` (every /imagine and click reads one, several
    times): a change made through this store shows at once; one made by another process sharing
    the database (a dashboard, a second bot) within that time.

    Args:
        storage: an open :class:`Storage`.
        settings: the operator's settings (defaults and the bounds a server may only tighten).
    """

    def __init__(self, storage: Storage, settings: Settings) -> None:
        self.storage = storage
        self.settings = settings
        # Setters read, change and write: one at a time, so two admins' edits cannot lose one another.
        self._lock = asyncio.Lock()
        self._cache: dict[str, tuple[float, GuildConfig]] = {}

    async def load(self, guild_id: str) -> GuildConfig:
        """This server's config: its stored settings over the operator's defaults and limits."""
        now = _clock()
        cached = self._cache.get(guild_id)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        config = _from_rows(await self.storage.guild_settings(guild_id), self.settings)
        self._remember(guild_id, config, now)
        return config

    def _remember(self, guild_id: str, config: GuildConfig, now: float) -> None:
        if len(self._cache) >= MAX_CACHED:  # forget the expired ones; a busy bot keeps the active guilds
            self._cache = {g: entry for g, entry in self._cache.items() if now - entry[0] < CACHE_SECONDS}
        self._cache[guild_id] = (now, config)

    async def allow_channel(self, guild_id: str, channel_id: int, *, actor_id: str) -> GuildConfig:
        """Let /imagine work in one more channel (the first one turns "everywhere" into a list)."""

        def change(c: GuildConfig) -> GuildConfig:
            if channel_id not in c.allowed_channels and len(c.allowed_channels) >= MAX_CHANNELS:
                raise InvalidSettingError(f"At most {MAX_CHANNELS} channels can be listed; remove one first.")
            return replace(c, allowed_channels=c.allowed_channels | {channel_id})

        return await self._change(guild_id, actor_id, change)

    async def disallow_channel(self, guild_id: str, channel_id: int, *, actor_id: str) -> GuildConfig:
        """Take a channel off the list. The last one is refused: an empty list would mean every channel."""

        def change(c: GuildConfig) -> GuildConfig:
            if c.allowed_channels == {channel_id}:
                raise InvalidSettingError(
                    "That is the only channel /imagine is allowed in; removing it would allow every channel. "
                    "Add another first, or use /settings channels clear to allow every channel."
                )
            return replace(c, allowed_channels=c.allowed_channels - {channel_id})

        return await self._change(guild_id, actor_id, change)

    async def clear_channels(self, guild_id: str, *, actor_id: str) -> GuildConfig:
        """/imagine works in every channel again."""
        return await self._change(guild_id, actor_id, lambda c: replace(c, allowed_channels=frozenset()))

    async def set_limits(
        self,
        guild_id: str,
        *,
        actor_id: str,
        per_user_cap: int | None = None,
        cooldown_seconds: int | None = None,
        queue_cap: int | None = None,
    ) -> GuildConfig:
        """Change any of the per-user cap, the cooldown and the queue cap (None leaves one as it is)."""
        s = self.settings
        if per_user_cap is not None and not 1 <= per_user_cap <= s.per_user_cap:
            raise InvalidSettingError(
                f"The per-user limit must be 1 to {s.per_user_cap}: this bot's operator allows at most "
                f"{s.per_user_cap}, and a server may only tighten that."
            )
        if queue_cap is not None and not 1 <= queue_cap <= s.per_guild_queue_cap:
            raise InvalidSettingError(
                f"The queue cap must be 1 to {s.per_guild_queue_cap}: this bot's operator allows at most "
                f"{s.per_guild_queue_cap}, and a server may only tighten that."
            )
        if cooldown_seconds is not None and not 0 <= cooldown_seconds <= MAX_COOLDOWN:
            raise InvalidSettingError(f"The cooldown must be 0 to {MAX_COOLDOWN} seconds (a day).")

        def change(c: GuildConfig) -> GuildConfig:
            return replace(
                c,
                per_user_cap=c.per_user_cap if per_user_cap is None else per_user_cap,
                cooldown_seconds=c.cooldown_seconds if cooldown_seconds is None else cooldown_seconds,
                queue_cap=c.queue_cap if queue_cap is None else queue_cap,
            )

        return await self._change(guild_id, actor_id, change)

    async def set_default_model(self, guild_id: str, model: str, *, actor_id: str) -> GuildConfig:
        """Make ``model`` what /imagine uses when none is chosen; it must be allowed here."""
        self._check_available(model)

        def change(c: GuildConfig) -> GuildConfig:
            if model not in c.allowed_models:
                raise InvalidSettingError(f"`{model}` is not allowed in this server; allow it first.")
            return replace(c, default_model=model)

        return await self._change(guild_id, actor_id, change)

    async def allow_model(self, guild_id: str, model: str, *, actor_id: str) -> GuildConfig:
        """Let members choose ``model`` (one of the operator's models)."""
        self._check_available(model)

        def change(c: GuildConfig) -> GuildConfig:
            return c if model in c.allowed_models else replace(c, allowed_models=(*c.allowed_models, model))

        return await self._change(guild_id, actor_id, change)

    async def disallow_model(self, guild_id: str, model: str, *, actor_id: str) -> GuildConfig:
        """Stop members choosing ``model``; the default model cannot be disallowed."""

        def change(c: GuildConfig) -> GuildConfig:
            if model == c.default_model:
                raise InvalidSettingError(f"`{model}` is this server's default model; choose another default first.")
            return replace(c, allowed_models=tuple(m for m in c.allowed_models if m != model))

        return await self._change(guild_id, actor_id, change)

    async def set_nsfw_policy(
        self, guild_id: str, channel_id: int, policy: NsfwPolicy | None, *, age_restricted: bool, actor_id: str
    ) -> GuildConfig:
        """Set a channel's policy; None returns it to the default (suggestive only if age-restricted).

        Args:
            age_restricted: whether Discord marks the channel age-restricted now; ``suggestive`` is
                refused otherwise.
        """
        if policy is NsfwPolicy.SUGGESTIVE and not age_restricted:
            raise InvalidSettingError(
                f"<#{channel_id}> is not age-restricted. Mark it age-restricted in the channel's settings first: "
                "suggestive content is only ever allowed there, and explicit content never is."
            )

        def change(c: GuildConfig) -> GuildConfig:
            policies = {k: v for k, v in c.nsfw_policies.items() if k != channel_id}
            if policy is not None and len(policies) >= MAX_CHANNELS:
                raise InvalidSettingError(
                    f"At most {MAX_CHANNELS} channels can have their own policy; set one back to default first."
                )
            if policy is not None:
                policies[channel_id] = policy
            return replace(c, nsfw_policies=policies)

        return await self._change(guild_id, actor_id, change)

    async def set_review_channel(self, guild_id: str, channel_id: int | None, *, actor_id: str) -> GuildConfig:
        """Where moderators review flagged images; None: they wait in the queue."""
        return await self._change(guild_id, actor_id, lambda c: replace(c, review_channel=channel_id))

    async def set_moderator_role(self, guild_id: str, role_id: int | None, *, actor_id: str) -> GuildConfig:
        """A role whose members may moderate jobs; None: only members with Manage Messages."""
        return await self._change(guild_id, actor_id, lambda c: replace(c, moderator_role=role_id))

    async def set_strictness(self, guild_id: str, strictness: str, *, actor_id: str) -> GuildConfig:
        """The safety level of this server's checks."""
        if strictness not in STRICTNESS:
            raise InvalidSettingError(f"Strictness must be one of {', '.join(STRICTNESS)}.")
        return await self._change(guild_id, actor_id, lambda c: replace(c, strictness=strictness))

    async def set_variation_mode(self, guild_id: str, mode: str, *, actor_id: str) -> GuildConfig:
        """How far V1-V4 stray from the image: ``subtle`` or ``strong``."""
        if mode not in VARIATION_MODES:
            raise InvalidSettingError(f"Variations must be one of {', '.join(VARIATION_MODES)}.")
        return await self._change(guild_id, actor_id, lambda c: replace(c, variation_mode=mode))

    async def set_credentials_personal(self, guild_id: str, enabled: bool, *, actor_id: str) -> GuildConfig:
        """Whether this server's images carry their prompt in their Content Credentials (C2PA)."""
        return await self._change(guild_id, actor_id, lambda c: replace(c, credentials_personal=enabled))

    async def set_strikes(
        self,
        guild_id: str,
        *,
        actor_id: str,
        limit: int | None = None,
        window_hours: int | None = None,
        ban_hours: int | None = None,
    ) -> GuildConfig:
        """How many strikes within how many hours ban a member, and for how long (0 = until lifted)."""
        if limit is not None and not 0 <= limit <= MAX_STRIKES:
            raise InvalidSettingError(f"The strike limit must be 0 (never ban) to {MAX_STRIKES}.")
        if window_hours is not None and not 1 <= window_hours <= MAX_STRIKE_WINDOW_HOURS:
            raise InvalidSettingError(f"The strike window must be 1 to {MAX_STRIKE_WINDOW_HOURS} hours (a year).")
        if ban_hours is not None and not 0 <= ban_hours <= MAX_BAN_HOURS:
            raise InvalidSettingError(f"The ban must last 0 (until lifted) to {MAX_BAN_HOURS} hours (a year).")

        def change(c: GuildConfig) -> GuildConfig:
            return replace(
                c,
                strike_limit=c.strike_limit if limit is None else limit,
                strike_window_hours=c.strike_window_hours if window_hours is None else window_hours,
                strike_ban_hours=c.strike_ban_hours if ban_hours is None else ban_hours,
            )

        return await self._change(guild_id, actor_id, change)

    async def add_blocked_term(self, guild_id: str, term: str, category: str, *, actor_id: str) -> GuildConfig:
        """Add a prompt term this server blocks (or flags) like the filter's own terms of ``category``."""
        term = " ".join(term.split())
        if category not in BLOCKLIST_CATEGORIES:
            raise InvalidSettingError(f"The category must be one of {', '.join(BLOCKLIST_CATEGORIES)}.")
        if not term or len(term) > MAX_TERM_CHARS:
            raise InvalidSettingError(f"A term must be 1 to {MAX_TERM_CHARS} characters.")
        try:
            PromptRules(additions={PromptCategory(category): (term,)})
        except ValueError as exc:
            raise InvalidSettingError(f"That term cannot be used: {exc}.") from None

        def change(c: GuildConfig) -> GuildConfig:
            terms = c.blocklist.get(category, ())
            if term.casefold() in (t.casefold() for t in terms):
                return c  # already listed: no change, no error (even when the list is full)
            if sum(len(t) for t in c.blocklist.values()) >= MAX_BLOCKLIST:
                raise InvalidSettingError(f"This server already lists {MAX_BLOCKLIST} terms; remove one first.")
            return replace(c, blocklist={**c.blocklist, category: (*terms, term)})

        return await self._change(guild_id, actor_id, change)

    async def remove_blocked_term(self, guild_id: str, term: str, *, actor_id: str) -> GuildConfig:
        """Take a term off this server's blocklist (whatever its category).

        Raises:
            InvalidSettingError: the term is not listed.
        """
        wanted = " ".join(term.split()).casefold()

        def change(c: GuildConfig) -> GuildConfig:
            lists = {k: tuple(t for t in v if t.casefold() != wanted) for k, v in c.blocklist.items()}
            if lists == dict(c.blocklist):
                raise InvalidSettingError(f"`{term[:MAX_TERM_CHARS]}` is not on this server's blocklist.")
            return replace(c, blocklist=lists)

        return await self._change(guild_id, actor_id, change)

    def _check_available(self, model: str) -> None:
        available = self.settings.available_models
        if model not in available:
            raise InvalidSettingError(
                f"`{model[:100]}` is not one of this bot's models: {', '.join(f'`{m}`' for m in available)}."
            )

    async def _change(self, guild_id: str, actor_id: str, change: Callable[[GuildConfig], GuildConfig]) -> GuildConfig:
        async with self._lock:
            self._cache.pop(guild_id, None)  # read what is stored, not what was cached
            old = await self.load(guild_id)
            new = change(old)
            for key, (write, _) in _CODECS.items():
                before, after = write(old), write(new)
                if before == after:
                    continue
                await self.storage.set_guild_setting(guild_id, key, after)
                await self.storage.audit(SETTING_CHANGED, guild_id=guild_id, actor_id=actor_id, target=key,
                                         detail={"old": before, "new": after})  # fmt: skip
            self._remember(guild_id, new, _clock())
            return new
