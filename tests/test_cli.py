"""The ``imaginebot`` command line, end to end on the built-in tiny model (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.cli import main

ROOT = Path(__file__).resolve().parents[1]
# No CLIP weights can be had offline, so the nsfw stage would block everything (fail closed).
OFFLINE_STAGES = "prompt,integrity,faces"


def imaginebot(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGINEBOT_DATA_DIR": str(data_dir), "IMAGINEBOT_SAFETY_STAGES": OFFLINE_STAGES}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


def pixels(path: str) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(path))


def psnr(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def test_generate_is_reproducible_and_reports_json(tmp_path: Path) -> None:
    args = ("generate", "a lighthouse at dusk", "--count", "4", "--seed", "7", "--size", "192x192", "--json")
    first = json.loads(imaginebot(tmp_path / "data", *args, "--out", str(tmp_path / "a")).stdout)
    second = json.loads(imaginebot(tmp_path / "data", *args, "--out", str(tmp_path / "b")).stdout)
    assert first["state"] == "done" and first["job_id"] != second["job_id"]
    assert [o["seed"] for o in first["outputs"]] == [7, 8, 9, 10]
    assert all(o["verdict"]["decision"] == "allow" for o in first["outputs"])
    assert len(list((tmp_path / "a").glob("*.png"))) == 5  # 4 images + the grid
    for a, b in zip(first["outputs"], second["outputs"], strict=True):
        assert Path(a["path"]).parent == tmp_path / "a"
        # Same pixels but for the invisible watermark, which carries each output's own id (~40 dB each).
        assert psnr(pixels(a["path"]), pixels(b["path"])) > 35
    assert pixels(first["grid"]).shape == (384, 384, 3)  # 2x2 tiles of 192
    assert set(first["timings"]) >= {"generate", "safety", "mark", "store"}

    listed = json.loads(imaginebot(tmp_path / "data", "jobs", "--json").stdout)
    assert [j["job_id"] for j in listed] == [second["job_id"], first["job_id"]]
    assert all(j["state"] == "done" and len(j["outputs"]) == 4 and j["prompt"] for j in listed)

    text = imaginebot(tmp_path / "data", "jobs").stdout
    assert first["job_id"] in text and "a lighthouse at dusk" in text


def test_text_report(tmp_path: Path) -> None:
    out = imaginebot(tmp_path, "generate", "a red circle", "--count", "2", "--seed", "1", "--size", "192x192").stdout
    assert "done" in out and "seed 1" in out and "timings" in out and "grid:" in out and "allow" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x", "--steps", "0"], "--steps: 0 is outside 1..150"),
        (["generate", "x", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
        (["generate", "x", "--size", "12x"], "invalid size '12x'"),
        (["generate", "x", "--size", "100x100"], "--size: width 100 must be a multiple of 8"),
        (["generate", "x", "--count", "9"], "--count: 9 is outside 1..4"),
        (["generate", "x", "--guidance", "-2"], "--guidance: -2.0 is outside"),
        (["generate", "x", "--seed", "-1"], "--seed: -1 is outside"),
        (["generate", "   "], "prompt: must not be empty"),
        (["generate"], "one of the arguments prompt --prompts is required"),
        (["generate", "x", "--prompts", "nope.txt"], "not allowed with argument"),
        (["generate", "--prompts", "/nonexistent/prompts.txt"], "--prompts: cannot read"),
        (["generate", "x", "--model", "builtin:huge"], "--model: unknown built-in model 'builtin:huge'"),
        (["generate", "x", "--size", "128x256"], "--size: 128x256 is too small to carry the provenance watermark"),
        (["jobs", "--limit", "0"], "--limit: 0 must be at least 1"),
        (["jobs", "--state", "lost"], "argument --state: invalid choice: 'lost'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(tmp_path))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("imaginebot: error: ") and "Traceback" not in err


def test_a_missing_model_directory_is_refused_before_accepting_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(tmp_path / "data"))
    assert main(["generate", "x", "--model", str(tmp_path / "no-such-model")]) == 2
    assert "--model: " in capsys.readouterr().err
    assert main(["jobs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_bad_configuration_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGINEBOT_MAX_BATCH_IMAGES", "lots")
    assert main(["jobs"]) == 2
    assert "IMAGINEBOT_MAX_BATCH_IMAGES (max_batch_images): 'lots' is not an integer" in capsys.readouterr().err


def test_batch_mode_queues_one_job_per_line(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  a blue square  \na green star\n")
    result = imaginebot(tmp_path / "data", "generate", "--prompts", str(prompts), "--count", "1", "--size", "192x192",
                        "--json")  # fmt: skip
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["a red circle", "a blue square", "a green star"]
    assert all(r["state"] == "done" and len(r["outputs"]) == 1 for r in records)


def test_run_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.delenv("IMAGINEBOT_DISCORD_TOKEN", raising=False)
    assert main(["run"]) == 2
    assert "needs a token" in capsys.readouterr().err


def test_invite_prints_the_link_the_readme_describes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.chat.client import INVITE_PERMISSIONS

    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(tmp_path))
    assert main(["invite", "123456789012345678"]) == 0
    link = capsys.readouterr().out.strip()
    assert link == ("https://discord.com/oauth2/authorize?client_id=123456789012345678"
                    f"&scope=bot+applications.commands&permissions={INVITE_PERMISSIONS.value}")  # fmt: skip
    granted = {name for name, on in INVITE_PERMISSIONS if on}
    assert granted == {
        "read_messages",
        "send_messages",
        "send_messages_in_threads",
        "embed_links",
        "attach_files",
        "read_message_history",
    }  # fmt: skip  (read_messages is "View Channels")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"permissions={INVITE_PERMISSIONS.value}" in readme
    assert main(["invite", "my-bot"]) == 2
    assert "is not an application id" in capsys.readouterr().err
