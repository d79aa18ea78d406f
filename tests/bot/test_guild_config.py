"""GuildConfig: defaults from Settings, validated and audited changes, storage round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import Settings
from bot.errors import InvalidSettingError, PromptBlockedError, UserFacingError
from bot.guild_config import (
    MAX_BAN_HOURS,
    MAX_CHANNELS,
    MAX_STRIKE_WINDOW_HOURS,
    MAX_STRIKES,
    MAX_TERM_CHARS,
    SETTING_CHANGED,
    GuildConfig,
    GuildConfigStore,
    NsfwPolicy,
)
from bot.storage import MEMORY, Storage
from safety.prompt_filter import PromptCategory

SETTINGS = replace(
    Settings(), model="builtin:tiny", per_user_cap=3, per_guild_queue_cap=50, models=("sd-turbo", "builtin:tiny")
)
ADMIN = "admin-1"


@pytest.fixture
async def storage() -> AsyncIterator[Storage]:
    async with await Storage.open(MEMORY) as storage:
        yield storage


@pytest.fixture
def store(storage: Storage) -> GuildConfigStore:
    return GuildConfigStore(storage, SETTINGS)


def test_available_models_start_with_the_default_and_repeat_nothing() -> None:
    assert SETTINGS.available_models == ("builtin:tiny", "sd-turbo")
    assert Settings().available_models == ("builtin:demo",)
    assert Settings.from_mapping({"models": "a, b,,a"}).models == ("a", "b")


async def test_a_new_server_gets_the_operators_defaults(store: GuildConfigStore) -> None:
    config = await store.load("g1")
    assert config == GuildConfig.defaults(SETTINGS)
    assert (config.per_user_cap, config.queue_cap, config.cooldown_seconds) == (3, 50, 0)
    assert config.default_model == "builtin:tiny" and config.allowed_models == ("builtin:tiny", "sd-turbo")
    assert config.strictness == "standard" and config.variation_mode == "strong"
    assert config.allows_channel(123) and config.review_channel is None and config.moderator_role is None


async def test_every_setting_round_trips_through_storage(storage: Storage, store: GuildConfigStore) -> None:
    await store.allow_channel("g1", 11, actor_id=ADMIN)
    await store.allow_channel("g1", 12, actor_id=ADMIN)
    await store.set_limits("g1", actor_id=ADMIN, per_user_cap=2, cooldown_seconds=30, queue_cap=10)
    await store.set_default_model("g1", "sd-turbo", actor_id=ADMIN)
    await store.disallow_model("g1", "builtin:tiny", actor_id=ADMIN)
    await store.set_nsfw_policy("g1", 11, NsfwPolicy.STRICT, age_restricted=True, actor_id=ADMIN)
    await store.set_review_channel("g1", 13, actor_id=ADMIN)
    await store.set_moderator_role("g1", 14, actor_id=ADMIN)
    await store.set_strictness("g1", "strict", actor_id=ADMIN)
    expected = await store.set_variation_mode("g1", "subtle", actor_id=ADMIN)

    loaded = await GuildConfigStore(storage, SETTINGS).load("g1")  # a fresh reader sees the same values
    assert loaded == expected
    assert loaded.allowed_channels == {11, 12} and not loaded.allows_channel(99) and loaded.allows_channel(99, 12)
    assert (loaded.per_user_cap, loaded.cooldown_seconds, loaded.queue_cap) == (2, 30, 10)
    assert loaded.default_model == "sd-turbo" and loaded.allowed_models == ("sd-turbo",)
    assert dict(loaded.nsfw_policies) == {11: NsfwPolicy.STRICT}
    assert (loaded.review_channel, loaded.moderator_role) == (13, 14)
    assert (loaded.strictness, loaded.variation_mode) == ("strict", "subtle")
    assert await store.load("g2") == GuildConfig.defaults(SETTINGS)  # other servers are untouched
    # The service has always read strictness from its own row; it still can.
    assert await storage.get_guild_setting("g1", "strictness") == "strict"


async def test_every_change_is_audited_with_actor_and_old_and_new_values(
    storage: Storage, store: GuildConfigStore
) -> None:
    await store.set_limits("g1", actor_id=ADMIN, per_user_cap=2)
    await store.set_limits("g1", actor_id="admin-2", per_user_cap=2)  # no change: nothing written
    await store.allow_channel("g1", 11, actor_id="admin-2")
    first, second = reversed(await storage.audit_entries(guild_id="g1"))
    assert (first.action, first.actor_id, first.target) == (SETTING_CHANGED, ADMIN, "per_user_cap")
    assert first.detail == {"old": 3, "new": 2}
    assert (second.actor_id, second.target, second.detail) == (
        "admin-2",
        "allowed_channels",
        {"old": [], "new": ["11"]},
    )


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"per_user_cap": 4}, "per-user limit must be 1 to 3: this bot's operator allows at most 3"),
        ({"per_user_cap": 0}, "per-user limit must be 1 to 3"),
        ({"queue_cap": 51}, "queue cap must be 1 to 50: this bot's operator allows at most 50"),
        ({"cooldown_seconds": -1}, "cooldown must be 0 to 86400 seconds"),
        ({"cooldown_seconds": 86401}, "cooldown must be 0 to 86400 seconds"),
    ],
)
async def test_limits_may_only_tighten_the_operators(
    storage: Storage, store: GuildConfigStore, limits: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidSettingError, match=message):
        await store.set_limits("g1", actor_id=ADMIN, **limits)
    assert await storage.guild_settings("g1") == {} and await storage.audit_entries() == []


async def test_limits_at_the_operators_bounds_are_accepted(store: GuildConfigStore) -> None:
    config = await store.set_limits("g1", actor_id=ADMIN, per_user_cap=3, queue_cap=50, cooldown_seconds=86400)
    assert (config.per_user_cap, config.queue_cap, config.cooldown_seconds) == (3, 50, 86400)


async def test_models_must_be_offered_by_the_operator_and_the_default_stays_allowed(store: GuildConfigStore) -> None:
    with pytest.raises(InvalidSettingError, match="not one of this bot's models: `builtin:tiny`, `sd-turbo`"):
        await store.allow_model("g1", "sdxl", actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match="not one of this bot's models"):
        await store.set_default_model("g1", "sdxl", actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match="default model; choose another default first"):
        await store.disallow_model("g1", "builtin:tiny", actor_id=ADMIN)
    await store.disallow_model("g1", "sd-turbo", actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match="not allowed in this server; allow it first"):
        await store.set_default_model("g1", "sd-turbo", actor_id=ADMIN)
    config = await store.allow_model("g1", "sd-turbo", actor_id=ADMIN)
    assert config.allowed_models == ("builtin:tiny", "sd-turbo")


async def test_suggestive_needs_an_age_restricted_channel(storage: Storage, store: GuildConfigStore) -> None:
    with pytest.raises(InvalidSettingError, match=r"not age-restricted\. Mark it age-restricted"):
        await store.set_nsfw_policy("g1", 7, NsfwPolicy.SUGGESTIVE, age_restricted=False, actor_id=ADMIN)
    assert await storage.guild_settings("g1") == {}
    config = await store.set_nsfw_policy("g1", 7, NsfwPolicy.SUGGESTIVE, age_restricted=True, actor_id=ADMIN)
    assert config.allows_suggestive(7, age_restricted=True)
    config = await store.set_nsfw_policy("g1", 7, None, age_restricted=True, actor_id=ADMIN)  # back to default
    assert dict(config.nsfw_policies) == {}


def test_nsfw_policy_only_ever_takes_away() -> None:
    config = replace(GuildConfig.defaults(SETTINGS), nsfw_policies={1: NsfwPolicy.STRICT, 2: NsfwPolicy.SUGGESTIVE})
    assert not config.allows_suggestive(1, age_restricted=True)  # strict even though age-restricted
    assert config.allows_suggestive(2, age_restricted=True)
    assert not config.allows_suggestive(2, age_restricted=False)  # Discord's flag was removed since
    assert config.allows_suggestive(3, age_restricted=True)  # default: follows Discord's flag
    assert not config.allows_suggestive(3, age_restricted=False)


async def test_the_last_allowed_channel_cannot_be_removed_by_accident(store: GuildConfigStore) -> None:
    await store.allow_channel("g1", 11, actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match="would allow every channel"):
        await store.disallow_channel("g1", 11, actor_id=ADMIN)
    await store.allow_channel("g1", 12, actor_id=ADMIN)
    assert (await store.disallow_channel("g1", 11, actor_id=ADMIN)).allowed_channels == {12}
    assert (await store.clear_channels("g1", actor_id=ADMIN)).allowed_channels == frozenset()


async def test_choices_are_checked(store: GuildConfigStore) -> None:
    with pytest.raises(InvalidSettingError, match="Strictness must be one of relaxed, standard, strict"):
        await store.set_strictness("g1", "lenient", actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match="Variations must be one of subtle, strong"):
        await store.set_variation_mode("g1", "wild", actor_id=ADMIN)
    assert issubclass(InvalidSettingError, UserFacingError)


def test_the_moderator_role_makes_a_moderator() -> None:
    config = replace(GuildConfig.defaults(SETTINGS), moderator_role=5)
    assert config.is_moderator([4, 5]) and not config.is_moderator([4])
    assert not GuildConfig.defaults(SETTINGS).is_moderator([5])


async def test_the_operators_later_limits_win_over_stored_values(storage: Storage, store: GuildConfigStore) -> None:
    await store.set_limits("g1", actor_id=ADMIN, per_user_cap=3, queue_cap=40)
    await store.set_default_model("g1", "sd-turbo", actor_id=ADMIN)
    await storage.set_guild_setting("g1", "variation_mode", 42)  # a row this code cannot read: ignored
    tighter = replace(SETTINGS, per_user_cap=2, per_guild_queue_cap=20, models=())
    config = await GuildConfigStore(storage, tighter).load("g1")
    assert (config.per_user_cap, config.queue_cap) == (2, 20)
    assert config.default_model == "builtin:tiny" and config.allowed_models == ("builtin:tiny",)
    assert config.variation_mode == "strong"


async def test_channel_lists_are_capped_so_show_fits_one_message(store: GuildConfigStore) -> None:
    for channel in range(MAX_CHANNELS):
        await store.allow_channel("g1", channel, actor_id=ADMIN)
        await store.set_nsfw_policy("g1", channel, NsfwPolicy.STRICT, age_restricted=False, actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match=f"At most {MAX_CHANNELS} channels can be listed"):
        await store.allow_channel("g1", MAX_CHANNELS, actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match=f"At most {MAX_CHANNELS} channels can have their own policy"):
        await store.set_nsfw_policy("g1", MAX_CHANNELS, NsfwPolicy.STRICT, age_restricted=False, actor_id=ADMIN)
    await store.allow_channel("g1", 0, actor_id=ADMIN)  # already listed: no change, no error
    await store.set_nsfw_policy("g1", 0, NsfwPolicy.STRICT, age_restricted=False, actor_id=ADMIN)


async def test_loads_are_cached_but_changes_show_at_once(
    storage: Storage, store: GuildConfigStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.guild_config as guild_config

    reads = 0
    real = storage.guild_settings

    async def counting(guild_id: str) -> dict[str, object]:
        nonlocal reads
        reads += 1
        return await real(guild_id)

    monkeypatch.setattr(storage, "guild_settings", counting)
    assert (await store.load("g")).strictness == "standard"
    assert (await store.load("g")).strictness == "standard"
    assert reads == 1  # the second load came from the cache
    await store.set_strictness("g", "strict", actor_id="admin")
    assert (await store.load("g")).strictness == "strict"  # this store's own change: at once

    # Another process (here: another store on the same database) changes it; seen once the entry expires.
    await GuildConfigStore(storage, SETTINGS).set_strictness("g", "relaxed", actor_id="other")
    assert (await store.load("g")).strictness == "strict"
    later = guild_config._clock() + guild_config.CACHE_SECONDS + 1
    monkeypatch.setattr(guild_config, "_clock", lambda: later)
    assert (await store.load("g")).strictness == "relaxed"


# -- strikes and the blocklist (moderation) --------------------------------------------------------


async def test_strike_settings_are_bounded_stored_and_audited(storage: Storage, store: GuildConfigStore) -> None:
    defaults = await store.load("g1")
    assert (defaults.strike_limit, defaults.strike_window_hours, defaults.strike_ban_hours) == (3, 30 * 24, 7 * 24)
    config = await store.set_strikes("g1", actor_id=ADMIN, limit=0, window_hours=1, ban_hours=0)
    assert (config.strike_limit, config.strike_window_hours, config.strike_ban_hours) == (0, 1, 0)
    config = await store.set_strikes("g1", actor_id=ADMIN, limit=MAX_STRIKES, window_hours=MAX_STRIKE_WINDOW_HOURS,
                                     ban_hours=MAX_BAN_HOURS)  # fmt: skip
    assert (config.strike_limit, config.strike_window_hours, config.strike_ban_hours) == (20, 8760, 8760)
    assert (await GuildConfigStore(storage, SETTINGS).load("g1")) == config
    await store.set_strikes("g1", actor_id="admin-2", limit=5)  # only what is given changes
    entries = [(e.actor_id, e.target, e.detail["old"], e.detail["new"]) for e in await storage.audit_entries()]
    assert entries[0] == ("admin-2", "strike_limit", 20, 5) and len(entries) == 7
    assert ("admin-1", "strike_ban_hours", 168, 0) in entries


@pytest.mark.parametrize(
    ("strikes", "message"),
    [
        ({"limit": -1}, "strike limit must be 0 \\(never ban\\) to 20"),
        ({"limit": MAX_STRIKES + 1}, "strike limit must be 0"),
        ({"window_hours": 0}, "strike window must be 1 to 8760 hours"),
        ({"window_hours": MAX_STRIKE_WINDOW_HOURS + 1}, "strike window must be 1 to 8760 hours"),
        ({"ban_hours": -1}, "ban must last 0 \\(until lifted\\) to 8760 hours"),
        ({"ban_hours": MAX_BAN_HOURS + 1}, "ban must last 0"),
    ],
)
async def test_strike_settings_out_of_bounds_change_nothing(
    storage: Storage, store: GuildConfigStore, strikes: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidSettingError, match=message):
        await store.set_strikes("g1", actor_id=ADMIN, **strikes)
    assert await storage.guild_settings("g1") == {} and await storage.audit_entries() == []


async def test_stored_strike_settings_out_of_bounds_are_clamped(storage: Storage, store: GuildConfigStore) -> None:
    await storage.set_guild_setting("g1", "strike_limit", 99)
    await storage.set_guild_setting("g1", "strike_window_hours", 0)
    await storage.set_guild_setting("g1", "strike_ban_hours", -5)
    config = await store.load("g1")
    assert (config.strike_limit, config.strike_window_hours, config.strike_ban_hours) == (MAX_STRIKES, 1, 0)


async def test_blocked_terms_are_tidied_deduplicated_and_audited(storage: Storage, store: GuildConfigStore) -> None:
    config = await store.add_blocked_term("g1", "  Haunted    Lighthouse ", "gore", actor_id=ADMIN)
    assert dict(config.blocklist) == {"gore": ("Haunted Lighthouse",)}
    again = await store.add_blocked_term("g1", "haunted lighthouse", "gore", actor_id="admin-2")  # casefolded
    assert again == config
    config = await store.add_blocked_term("g1", "spoiler*", "hate", actor_id=ADMIN)
    assert dict(config.blocklist) == {"gore": ("Haunted Lighthouse",), "hate": ("spoiler*",)}
    assert config.prompt_additions == {PromptCategory.GORE: ("Haunted Lighthouse",), PromptCategory.HATE: ("spoiler*",)}
    assert await GuildConfigStore(storage, SETTINGS).load("g1") == config  # round trip
    entries = await storage.audit_entries()
    assert [(e.actor_id, e.target) for e in entries] == [(ADMIN, "blocklist"), (ADMIN, "blocklist")]
    assert entries[0].detail == {"old": {"gore": ["Haunted Lighthouse"]},
                                 "new": {"gore": ["Haunted Lighthouse"], "hate": ["spoiler*"]}}  # fmt: skip


@pytest.mark.parametrize(
    ("term", "category", "message"),
    [
        ("lighthouse", "protected_person", "category must be one of sexual, minors, gore, hate, self_harm"),
        ("lighthouse", "spam", "category must be one of"),
        ("   ", "gore", "A term must be 1 to 60 characters"),
        ("x" * (MAX_TERM_CHARS + 1), "gore", "A term must be 1 to 60 characters"),
        ("!!!", "gore", "That term cannot be used: .*empty after normalisation"),
        ("two words*", "gore", "That term cannot be used: .*stem must be one word"),
    ],
)
async def test_bad_blocked_terms_are_refused(
    storage: Storage, store: GuildConfigStore, term: str, category: str, message: str
) -> None:
    with pytest.raises(InvalidSettingError, match=message):
        await store.add_blocked_term("g1", term, category, actor_id=ADMIN)
    assert await storage.guild_settings("g1") == {} and await storage.audit_entries() == []


async def test_the_blocklist_is_capped(store: GuildConfigStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.guild_config as guild_config

    monkeypatch.setattr(guild_config, "MAX_BLOCKLIST", 3)
    for term, category in (("one", "gore"), ("two", "hate"), ("three", "gore")):
        await store.add_blocked_term("g1", term, category, actor_id=ADMIN)
    with pytest.raises(InvalidSettingError, match="already lists 3 terms; remove one first"):
        await store.add_blocked_term("g1", "four", "self_harm", actor_id=ADMIN)
    full = await store.add_blocked_term("g1", "ONE", "gore", actor_id=ADMIN)  # already listed: no change, no error
    assert sum(len(t) for t in full.blocklist.values()) == 3
    await store.remove_blocked_term("g1", "two", actor_id=ADMIN)
    assert "four" in (await store.add_blocked_term("g1", "four", "self_harm", actor_id=ADMIN)).blocklist["self_harm"]


async def test_removing_blocked_terms(storage: Storage, store: GuildConfigStore) -> None:
    await store.add_blocked_term("g1", "haunted lighthouse", "gore", actor_id=ADMIN)
    await store.add_blocked_term("g1", "fog", "gore", actor_id=ADMIN)
    await store.add_blocked_term("g1", "Fog", "hate", actor_id=ADMIN)
    config = await store.remove_blocked_term("g1", "  FOG ", actor_id=ADMIN)  # from every category
    assert dict(config.blocklist) == {"gore": ("haunted lighthouse",)}
    config = await store.remove_blocked_term("g1", "Haunted   Lighthouse", actor_id=ADMIN)
    assert dict(config.blocklist) == {} and config.prompt_additions == {}
    before = len(await storage.audit_entries())
    with pytest.raises(InvalidSettingError, match="`fog` is not on this server's blocklist"):
        await store.remove_blocked_term("g1", "fog", actor_id=ADMIN)
    assert len(await storage.audit_entries()) == before
    assert await GuildConfigStore(storage, SETTINGS).load("g1") == GuildConfig.defaults(SETTINGS)


async def test_a_servers_blocklist_reaches_the_prompt_filter_for_that_server_only(tmp_path: Path) -> None:
    from safety.prompt_filter import PromptFilter
    from safety.suite import GuildRules, PromptStage
    from tests.bot.test_moderation import desk_for, req

    rules = GuildRules(None)
    gate = PromptStage(PromptFilter.default(), rules)
    async with desk_for(tmp_path, prompt_gate=gate, rules=rules) as d:
        prompt = "a haunted lighthouse at dusk"
        await d.service.precheck(req("g1", prompt=prompt))
        await d.service.guild_configs.add_blocked_term("g1", "Haunted Lighthouse", "hate", actor_id=ADMIN)
        with pytest.raises(PromptBlockedError, match="hateful content") as refused:
            await d.service.precheck(req("g1", prompt=prompt))
        assert refused.value.category == "hate"
        with pytest.raises(PromptBlockedError):
            await d.service.submit(req("g1", prompt="HAUNTED  lighthouse"))
        await d.service.precheck(req("g2", prompt=prompt))  # another server's filter is unchanged
        await d.service.guild_configs.remove_blocked_term("g1", "haunted lighthouse", actor_id=ADMIN)
        await d.service.precheck(req("g1", prompt=prompt))
        # A change another process made reaches this one's filter once its cached config expires.
        other = GuildConfigStore(d.storage, d.service.guild_configs.settings)
        await other.add_blocked_term("g2", "lighthouse", "gore", actor_id=ADMIN)
        d.service.guild_configs._cache.clear()
        with pytest.raises(PromptBlockedError, match="graphic violence"):
            await d.service.precheck(req("g2", prompt=prompt))
