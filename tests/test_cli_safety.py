"""``imaginebot doctor | check | calibrate | protect`` against the real stages (in-process ``main``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from bot.cli import main
from tests.tiny_clip import save_tiny_clip


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGINEBOT_SAFETY_STAGES", "prompt,integrity,faces")
    monkeypatch.setenv("IMAGINEBOT_FACE_DETECTOR", "hog")
    return tmp_path


def run(args: list[str], capsys: pytest.CaptureFixture[str], *, status: int = 0) -> Any:
    assert main(args) == status, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in args else out


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_check_prompt_only(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocked = run(["check", "--prompt", "a n.u.d.e woman", "--json"], capsys)
    assert blocked["decision"] == "block" and blocked["category"] == "sexual" and list(blocked["stages"]) == ["prompt"]
    assert run(["check", "--prompt", "a cocktail in Scunthorpe", "--json"], capsys)["decision"] == "allow"
    age = run(["check", "--prompt", "a sexy pinup", "--age-restricted", "--json"], capsys)
    assert age["decision"] == "allow"
    assert "ALLOW" in run(["check", "--prompt", "a red circle"], capsys)


def test_protect_then_check_an_image(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = save(Image.fromarray(data.astronaut()), env / "astronaut.png")
    coffee = save(Image.fromarray(data.coffee()), env / "coffee.png")
    before = run(["check", str(photo), "--guild", "g1", "--json"], capsys)
    assert before["decision"] == "allow" and before["stages"]["faces"]["scores"]["faces.count"] == 1.0

    assert "protected Eileen Collins" in run(["protect", "add", "Eileen Collins", str(photo), "--guild", "g1"], capsys)
    listed = run(["protect", "list", "--guild", "g1", "--json"], capsys)
    assert [(p["name"], p["guild_id"], p["references"]) for p in listed] == [("Eileen Collins", "g1", 1)]

    after = run(["check", str(photo), "--guild", "g1", "--json"], capsys)
    assert after["decision"] == "block" and after["category"] == "protected_identity"
    assert run(["check", str(photo), "--guild", "g2", "--json"], capsys)["decision"] == "allow"
    named = run(["check", str(photo), "--prompt", "Eileen Collins on the moon", "--guild", "g2", "--json"], capsys)
    assert named["decision"] == "allow"  # only protected in g1; not a public figure
    assert run(["check", str(coffee), "--json"], capsys)["stages"]["faces"]["scores"]["faces.count"] == 0.0

    assert main(["protect", "add", "Nobody", str(coffee)]) == 2
    assert "exactly one face" in capsys.readouterr().err
    assert "no longer protecting" in run(["protect", "remove", "Eileen Collins", "--guild", "g1"], capsys)
    assert main(["protect", "remove", "Eileen Collins", "--guild", "g1"]) == 2
    assert "nobody named 'Eileen Collins'" in capsys.readouterr().err
    assert run(["protect", "list", "--json"], capsys) == []
    assert run(["jobs", "--json"], capsys) == []  # protecting people creates no jobs


def test_check_errors(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 2
    assert "give an IMAGE, --prompt, or both" in capsys.readouterr().err
    assert main(["check", str(env / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (env / "bad.png").write_bytes(b"not an image")
    assert main(["check", str(env / "bad.png")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_doctor_reports_every_stage_and_fails_when_one_is_missing(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = run(["doctor", "--json"], capsys)
    assert ok["ok"] is True and [s["stage"] for s in ok["safety"]] == ["prompt", "integrity", "faces"]
    assert ok["model"]["loaded"] is True and ok["database"]["schema_version"] >= 2
    monkeypatch.setenv("IMAGINEBOT_SAFETY_STAGES", "prompt,nsfw")
    monkeypatch.setenv("IMAGINEBOT_CLIP_MODEL", "ViT-B-32:/nonexistent.pt")
    missing = run(["doctor", "--json"], capsys, status=1)
    assert missing["ok"] is False
    assert [(s["stage"], s["active"]) for s in missing["safety"]] == [("prompt", True), ("nsfw", False)]
    assert "UNAVAILABLE" in run(["doctor"], capsys, status=1)


def test_calibrate_on_a_labelled_folder(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINEBOT_CLIP_MODEL", save_tiny_clip(env / "clip"))
    rng = np.random.default_rng(0)
    for label, count in (("safe", 4), ("nsfw", 3)):
        (env / "set" / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            save(Image.fromarray(pixels), env / "set" / label / f"{i}.png")
    report = run(["calibrate", str(env / "set"), "--target-fpr", "0.25", "--json"], capsys)
    levels = {(r["category"], r["level"]) for r in report["levels"]}
    assert ("sexual_explicit", "standard") in levels
    [suggestion] = report["suggestions"]
    assert suggestion["category"] == "sexual_explicit" and float(suggestion["false_positive_rate"]) <= 0.25
    assert "suggested thresholds" in run(["calibrate", str(env / "set")], capsys)
    (env / "set" / "cats").mkdir()
    assert main(["calibrate", str(env / "set")]) == 2
    assert "unknown label" in capsys.readouterr().err


def test_calibrate_without_clip_says_why(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGINEBOT_CLIP_MODEL", "ViT-B-32:/nonexistent.pt")
    (env / "set" / "safe").mkdir(parents=True)
    save(Image.new("RGB", (8, 8)), env / "set" / "safe" / "a.png")
    assert main(["calibrate", str(env / "set")]) == 2
    assert "the nsfw stage is unavailable" in capsys.readouterr().err
