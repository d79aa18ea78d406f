"""Settings: one typed, frozen object built at the entry point and passed down.

Sources, later ones winning: built-in defaults, a TOML file (``IMAGINEBOT_CONFIG`` or ``--config``),
then environment variables ``IMAGINEBOT_<FIELD>`` (``DISCORD_TOKEN`` is accepted for the token).
Every field is listed in :data:`FIELDS` with its parser and documentation; the README and
``deploy/imaginebot.env.example`` document the same fields (a test keeps them in step).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bot.errors import ConfigError
from safety.verdict import STRICTNESS

ENV_PREFIX = "IMAGINEBOT_"


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _parse_int(low: int, high: int) -> Callable[[str, object], int]:
    def parse(name: str, raw: object) -> int:
        if isinstance(raw, bool):
            raise ConfigError(f"{name}: {raw!r} is not an integer")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not an integer") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}: {value} is outside {low}..{high}")
        return value

    return parse


def _parse_str(name: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{name}: {raw!r} must be a non-empty string")
    return raw.strip()


def _parse_path(name: str, raw: object) -> Path:
    return Path(_parse_str(name, raw)).expanduser()


def _parse_choice(*choices: str) -> Callable[[str, object], str]:
    def parse(name: str, raw: object) -> str:
        value = _parse_str(name, raw).lower()
        if value not in choices:
            raise ConfigError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _parse_bool(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}: {raw!r} is not a boolean (true/false)")


def _parse_secret(name: str, raw: object) -> Secret | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ConfigError(f"{name}: must be a string")
    return Secret(raw.strip())


SAFETY_STAGES = ("prompt", "integrity", "nsfw", "faces", "nudenet")


def _parse_stages(name: str, raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    stages = tuple(str(item).strip().lower() for item in items if str(item).strip())
    unknown = [s for s in stages if s not in SAFETY_STAGES]
    if unknown:
        raise ConfigError(f"{name}: unknown stage {unknown[0]!r} (known: {', '.join(SAFETY_STAGES)})")
    if not stages:
        raise ConfigError(f"{name}: at least one safety stage is required")
    return tuple(dict.fromkeys(stages))


def _parse_ids(name: str, raw: object) -> tuple[int, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    ids = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if not text.isdigit():
            raise ConfigError(f"{name}: {text!r} is not a Discord id (digits only)")
        ids.append(int(text))
    return tuple(ids)


def _parse_optional_url(name: str, raw: object) -> str | None:
    if raw is None or raw == "":
        return None
    url = _parse_str(name, raw)
    if not url.startswith(("http://", "https://", "ws://", "wss://")):
        raise ConfigError(f"{name}: {url!r} must start with http(s):// or ws(s)://")
    return url.rstrip("/")


def _parse_models(name: str, raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    models = tuple(str(item).strip() for item in items if str(item).strip())
    return tuple(dict.fromkeys(models))


def _parse_optional_str(name: str, raw: object) -> str | None:
    return None if raw is None or raw == "" else _parse_str(name, raw)


def _parse_optional_path(name: str, raw: object) -> Path | None:
    return None if raw is None or raw == "" else _parse_path(name, raw)


def _parse_port(name: str, raw: object) -> int:
    """A TCP port; empty or 0 turns the listener off."""
    return 0 if raw is None or raw == "" else _parse_int(0, 65535)(name, raw)


def _parse_redis_url(name: str, raw: object) -> Secret | None:
    secret = _parse_secret(name, raw)
    if secret is not None and not secret.get().startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name}: must start with redis://, rediss:// or unix://")  # the value may hold a password
    return secret


@dataclass(frozen=True)
class FieldSpec:
    """How one setting is parsed and documented."""

    parse: Callable[[str, object], Any]
    doc: str


FIELDS: dict[str, FieldSpec] = {
    "data_dir": FieldSpec(_parse_path, "Directory for the SQLite database, images, keys and model cache."),
    "model": FieldSpec(
        _parse_str,
        "Default model: a diffusers model id (e.g. stabilityai/sd-turbo), a local directory, or builtin:demo.",
    ),
    "models": FieldSpec(
        _parse_models,
        "Other models servers may choose with /settings (comma-separated); the default model is always offered.",
    ),
    "offline": FieldSpec(_parse_bool, "Load models from local files only (no model hub downloads)."),
    "device": FieldSpec(_parse_choice("auto", "cpu", "cuda", "mps"), "Torch device for generation."),
    "max_batch_images": FieldSpec(_parse_int(1, 64), "Most images one pipeline call generates (jobs are batched)."),
    "per_user_cap": FieldSpec(_parse_int(1, 1000), "Most queued + running jobs per user (Discord users)."),
    "per_guild_queue_cap": FieldSpec(_parse_int(1, 100_000), "Most queued jobs per server."),
    "scheduler_quantum": FieldSpec(
        _parse_int(0, 10**9), "Cost a server may spend per scheduler turn; 0 = the cost of one default 4-image job."
    ),
    "strictness": FieldSpec(_parse_choice(*STRICTNESS), "Default safety strictness for every server."),
    "safety_stages": FieldSpec(
        _parse_stages,
        "Safety stages run on every request (prompt, integrity, nsfw, faces, nudenet). A listed stage that "
        "cannot load blocks every image.",
    ),
    "clip_model": FieldSpec(
        _parse_str, "open_clip model and weights for the NSFW and realism checks: MODEL:PRETRAINED_TAG_OR_PATH."
    ),
    "face_detector": FieldSpec(
        _parse_choice("auto", "nudenet", "hog"),
        "Face detector for the deepfake filter: auto = NudeNet's if the [nudenet] extra is installed, else dlib HOG.",
    ),
    "discord_guilds": FieldSpec(
        _parse_ids, "Guild ids to sync slash commands to (instant); empty = sync globally (can take an hour)."
    ),
    "discord_api_base": FieldSpec(
        _parse_optional_url, "Discord REST base URL, e.g. a nirn-proxy (default: Discord's own /api/v10)."
    ),
    "discord_gateway_url": FieldSpec(_parse_optional_url, "Discord gateway URL, e.g. a gateway proxy."),
    "dashboard_url": FieldSpec(
        _parse_optional_url, "Public URL of `imaginebot dashboard`, for /mod dashboard's login links; empty = off."
    ),
    "c2pa_cert": FieldSpec(
        _parse_optional_path,
        "PEM certificate chain (signing certificate first) for Content Credentials; empty = a local CA "
        "generated in the data directory's keys/c2pa/.",
    ),
    "c2pa_key": FieldSpec(_parse_optional_path, "PEM private key of c2pa_cert (unencrypted; keep it mode 0600)."),
    "metrics_port": FieldSpec(
        _parse_port, "Port of the Prometheus /metrics and /healthz, /readyz endpoints; empty or 0 = off."
    ),
    "metrics_host": FieldSpec(
        _parse_str, "Address the metrics endpoint listens on (0.0.0.0 in a container, so Prometheus can scrape it)."
    ),
    "redis_url": FieldSpec(
        _parse_redis_url,
        "Redis for GPU workers on other machines (redis://, rediss:// or unix://; `imaginebot worker` serves it); "
        "empty = generate in this process. Never printed (it may hold a password).",
    ),
    "redis_claim_idle_seconds": FieldSpec(
        _parse_int(1, 86_400),
        "A job a worker has not touched for this long (it died) is taken over by another live worker.",
    ),
    "redis_max_deliveries": FieldSpec(
        _parse_int(1, 100), "A job delivered to workers more often than this goes to the dead-letter stream and fails."
    ),
    "redis_result_ttl_seconds": FieldSpec(
        _parse_int(10, 604_800), "How long a finished job's images wait in Redis for the bot to take them."
    ),
    "worker_heartbeat_seconds": FieldSpec(
        _parse_int(1, 3600), "How often a worker announces itself; it counts as gone after three missed beats."
    ),
    "log_level": FieldSpec(_parse_choice("debug", "info", "warning", "error"), "Logging level of the process."),
    "discord_token": FieldSpec(
        _parse_secret, "Discord bot token (also read from DISCORD_TOKEN). Never printed or logged."
    ),
}


@dataclass(frozen=True)
class Settings:
    """All configuration of one imaginebot process. Build it with :meth:`load`."""

    data_dir: Path = Path("data")
    model: str = "builtin:demo"
    models: tuple[str, ...] = ()
    offline: bool = True
    device: str = "auto"
    max_batch_images: int = 4
    per_user_cap: int = 3
    per_guild_queue_cap: int = 50
    scheduler_quantum: int = 0
    strictness: str = "standard"
    safety_stages: tuple[str, ...] = ("prompt", "integrity", "nsfw", "faces")
    clip_model: str = "ViT-B-32:laion2b_s34b_b79k"
    face_detector: str = "auto"
    discord_guilds: tuple[int, ...] = ()
    discord_api_base: str | None = None
    dashboard_url: str | None = None
    discord_gateway_url: str | None = None
    c2pa_cert: Path | None = None
    c2pa_key: Path | None = None
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    redis_url: Secret | None = None
    redis_claim_idle_seconds: int = 60
    redis_max_deliveries: int = 3
    redis_result_ttl_seconds: int = 3600
    worker_heartbeat_seconds: int = 5
    log_level: str = "warning"
    discord_token: Secret | None = None

    @classmethod
    def load(cls, *, env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
        """Build settings from defaults, an optional TOML file, then the environment.

        Raises:
            ConfigError: a value is invalid or unknown; the message names the field and the value.
        """
        env = os.environ if env is None else env
        raw: dict[str, object] = {}
        file = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
        if file is not None:
            raw.update(_read_toml(file))
        if env.get("DISCORD_TOKEN"):
            raw["discord_token"] = env["DISCORD_TOKEN"]
        for name in FIELDS:
            key = ENV_PREFIX + name.upper()
            if key in env:
                raw[name] = env[key]
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> Settings:
        """Validate a mapping of field names to raw values (strings or TOML values)."""
        unknown = sorted(set(raw) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r} (known: {', '.join(FIELDS)})")
        values = {name: spec.parse(_label(name), raw[name]) for name, spec in FIELDS.items() if name in raw}
        return cls(**values)

    def describe(self) -> dict[str, str]:
        """Every setting as printable text; secrets stay masked."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    @property
    def available_models(self) -> tuple[str, ...]:
        """The models servers may choose from: the default model first, then ``models``."""
        return tuple(dict.fromkeys((self.model, *self.models)))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "imaginebot.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def protected_dir(self) -> Path:
        return self.data_dir / "protected"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


def default_of(name: str) -> object:
    """The built-in default of one setting (for documentation)."""
    return next(f.default for f in fields(Settings) if f.name == name)


def _label(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()} ({name})"


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    # Accept both a flat file and one with an [imaginebot] table.
    section = data.get("imaginebot", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {str(path)!r}: [imaginebot] must be a table")
    return dict(section)
