"""Killing the CLI mid-run loses nothing: ``imaginebot resume`` finishes every accepted job exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"a shape number {i}" for i in range(6)]


def states(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            return {}
    return dict(rows)


def test_sigkill_then_resume_completes_every_job_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    # One job per batch, slow enough that the kill lands with jobs done, running and queued.
    env = {**os.environ, "IMAGINEBOT_DATA_DIR": str(data), "IMAGINEBOT_MAX_BATCH_IMAGES": "2",
           "IMAGINEBOT_SAFETY_STAGES": "prompt,integrity,faces"}  # fmt: skip
    args = ["generate", "--prompts", str(prompts), "--count", "2", "--size", "192x192", "--steps", "30", "--seed", "5"]
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env)
    db = data / "imaginebot.sqlite3"
    deadline = time.monotonic() + 180
    seen: dict[str, int] = {}
    while time.monotonic() < deadline and process.poll() is None:
        seen = states(db)
        if seen.get("done", 0) >= 1 and seen.get("running", 0) >= 1 and seen.get("queued", 0) >= 1:
            break
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before it could be killed (states {seen})"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    at_kill = states(db)
    assert at_kill.get("done", 0) < len(PROMPTS) and sum(at_kill.values()) == len(PROMPTS), at_kill

    resumed = subprocess.run(
        [sys.executable, "-m", "bot.cli", "resume", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    records = json.loads(resumed.stdout)
    assert len(records) == len(PROMPTS) - at_kill.get("done", 0)
    assert states(db) == {"done": len(PROMPTS)}

    with sqlite3.connect(db) as conn:
        done_events = conn.execute(
            "SELECT job_id, COUNT(*) FROM job_events WHERE to_state = 'done' GROUP BY job_id"
        ).fetchall()
        outputs = conn.execute("SELECT job_id, COUNT(*), COUNT(DISTINCT idx) FROM outputs GROUP BY job_id").fetchall()
        paths = [row[0] for row in conn.execute("SELECT path FROM outputs")]
        prompts_stored = sorted(row[0] for row in conn.execute("SELECT prompt FROM jobs"))
    assert len(done_events) == len(PROMPTS) and all(count == 1 for _, count in done_events)
    assert len(outputs) == len(PROMPTS) and all(n == 2 and distinct == 2 for _, n, distinct in outputs)
    assert all(Path(p).is_file() for p in paths)
    assert prompts_stored == sorted(PROMPTS)
    assert not list((data / "images").rglob(".tmp-*"))  # swept on restart if the kill hit a write
    # a second resume finds nothing to do
    again = subprocess.run(
        [sys.executable, "-m", "bot.cli", "resume", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout) == []
