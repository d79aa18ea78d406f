"""GuildConfig: defaults from Settings, validated and audited changes, storage round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bot.config import Settings
from bot.errors import InvalidSettingError, UserFacingError
from bot.guild_config import MAX_CHANNELS, SETTING_CHANGED, GuildConfig, GuildConfigStore, NsfwPolicy
from bot.storage import MEMORY, Storage

SETTINGS = replace(Settings(), per_user_cap=3, per_guild_queue_cap=50, models=("sd-turbo", "builtin:tiny"))
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
    assert Settings().available_models == ("builtin:tiny",)
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
