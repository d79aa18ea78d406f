from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ENV_PREFIX, FIELDS, Secret, Settings
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    s = Settings.load(env={})
    assert s.model == "builtin:demo" and s.data_dir == Path("data") and s.discord_token is None


def test_env_overrides_toml(tmp_path: Path) -> None:
    file = tmp_path / "imaginebot.toml"
    file.write_text('[imaginebot]\nper_user_cap = 7\nmodel = "stabilityai/sd-turbo"\n')
    s = Settings.load(env={"IMAGINEBOT_PER_USER_CAP": "9"}, config_file=file)
    assert s.per_user_cap == 9 and s.model == "stabilityai/sd-turbo"


def test_config_file_from_env(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("max_batch_images = 8\noffline = false\n")
    s = Settings.load(env={"IMAGINEBOT_CONFIG": str(file)})
    assert s.max_batch_images == 8 and s.offline is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGINEBOT_PER_USER_CAP": "lots"}, r"IMAGINEBOT_PER_USER_CAP \(per_user_cap\): 'lots' is not an integer"),
        ({"IMAGINEBOT_MAX_BATCH_IMAGES": "0"}, r"IMAGINEBOT_MAX_BATCH_IMAGES \(max_batch_images\): 0 is outside"),
        ({"IMAGINEBOT_DEVICE": "tpu"}, r"'tpu' is not one of auto, cpu, cuda, mps"),
        ({"IMAGINEBOT_OFFLINE": "maybe"}, r"'maybe' is not a boolean"),
        ({"IMAGINEBOT_MODEL": "  "}, r"IMAGINEBOT_MODEL \(model\): '  ' must be a non-empty string"),
    ],
)
def test_invalid_values_name_field_and_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(env=env)


def test_unknown_toml_key_and_bad_toml(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("per_usr_cap = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'per_usr_cap'"):
        Settings.load(env={}, config_file=file)
    file.write_text("per_user_cap = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(env={}, config_file=file)
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(env={}, config_file=tmp_path / "missing.toml")


def test_token_never_prints() -> None:
    s = Settings.load(env={"DISCORD_TOKEN": "super-secret-token"})
    assert isinstance(s.discord_token, Secret) and s.discord_token.get() == "super-secret-token"
    for text in (repr(s), str(s), str(s.describe()), f"{s.discord_token}"):
        assert "super-secret-token" not in text
    prefixed = Settings.load(env={"DISCORD_TOKEN": "a", "IMAGINEBOT_DISCORD_TOKEN": "b"})
    assert prefixed.discord_token == Secret("b")


def test_every_field_is_documented_in_readme_and_env_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "deploy" / "imaginebot.env.example").read_text()
    for name in FIELDS:
        assert f"{ENV_PREFIX}{name.upper()}" in readme, name
        assert f"{ENV_PREFIX}{name.upper()}" in example, name
