"""``imaginebot verify`` end to end: images made by ``imaginebot generate``, stripped copies, foreign files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data

from bot.cli import main
from tests.test_cli import OFFLINE_STAGES, imaginebot


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("verify")
    args = ("generate", "a lighthouse at dusk", "--count", "2", "--seed", "7", "--size", "192x192", "--json")
    record = json.loads(imaginebot(root / "data", *args, "--out", str(root / "out")).stdout)
    return root, record


def verify(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> Any:
    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("IMAGINEBOT_SAFETY_STAGES", OFFLINE_STAGES)
    code = main(["verify", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in args else out


def test_generated_files_stripped_copies_and_foreign_images(
    generated: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, record = generated
    image = record["outputs"][0]["path"]
    stripped = root / "stripped.jpg"  # what Discord and most sites serve: re-encoded, no metadata
    Image.open(image).convert("RGB").save(stripped, format="JPEG", quality=60)
    foreign = root / "foreign.png"
    Image.fromarray(data.coffee()).resize((64, 64)).save(foreign)

    code, results = verify(monkeypatch, capsys, root, image, record["grid"], str(stripped), str(foreign), "--json")
    assert code == 0
    original, grid, copy, other = results
    assert set(original) >= {"file", "ours", "evidence", "job_id", "job", "c2pa"}
    assert original["ours"] and original["job_id"] == record["job_id"]
    kinds = [e["kind"] for e in original["evidence"]]
    assert kinds[:3] == ["c2pa", "signed-metadata", "sha256"] and "perceptual-hash" in kinds
    assert original["c2pa"]["valid"] and original["c2pa"]["ours"]
    assert original["job"]["model"] == "builtin:demo" and original["job"]["guild_id"] == "local"
    assert original["job"]["prompt"] is None  # only for moderators of the guild
    assert grid["ours"] and {e["kind"] for e in grid["evidence"]} >= {"c2pa", "sha256"}
    assert copy["ours"] and copy["job_id"] == record["job_id"]
    assert "perceptual-hash" in [e["kind"] for e in copy["evidence"]] and copy["c2pa"]["present"] is False
    assert other["ours"] is False and other["evidence"] == [] and other["job_id"] is None


def test_moderators_see_the_prompt_and_text_output(
    generated: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, record = generated
    code, text = verify(monkeypatch, capsys, root, record["outputs"][1]["path"], "--guild", "local")
    assert code == 0
    assert "made by this bot" in text and "evidence: c2pa" in text
    assert "prompt: a lighthouse at dusk" in text


def test_unreadable_files_exit_2_and_the_rest_are_still_checked(
    generated: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, record = generated
    junk = root / "junk.png"
    junk.write_bytes(b"not an image")
    args = (str(root / "missing.png"), str(junk), record["outputs"][0]["path"], "--json")
    code, results = verify(monkeypatch, capsys, root, *args)
    assert code == 2
    missing, bad, good = results
    assert "No such file" in missing["error"] and "not an image" in bad["error"]
    assert good["ours"] is True


def test_help_says_no_evidence_is_not_proof(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "not proof" in capsys.readouterr().out


def test_a_stripped_copy_is_found_by_its_watermark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("generate", "a red barn", "--count", "1", "--seed", "3", "--size", "512x512", "--json")
    record = json.loads(imaginebot(tmp_path / "data", *args).stdout)
    copy = tmp_path / "copy.jpg"
    Image.open(record["outputs"][0]["path"]).convert("RGB").save(copy, format="JPEG", quality=75)
    code, [result] = verify(monkeypatch, capsys, tmp_path, str(copy), "--json")
    assert code == 0 and result["ours"] and result["job_id"] == record["job_id"]
    assert [e["kind"] for e in result["evidence"]] == ["watermark", "perceptual-hash"]
