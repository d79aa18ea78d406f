"""The database schema, as an ordered list of migration scripts.

``MIGRATIONS[n - 1]`` takes a database from schema version ``n - 1`` to ``n``; the version is kept in
``PRAGMA user_version`` (0 for a new file). A migration, once released, is never edited: change the
schema by appending a new script. :class:`bot.storage.Storage` runs each pending script in its own
transaction, together with the ``user_version`` bump, so a crash leaves the database at a version
boundary and never half-migrated.

Tables are ``STRICT`` (SQLite >= 3.37): a value of the wrong type is an error, not silently kept.
Times are unix seconds (``REAL``); JSON columns hold ``json.dumps(..., sort_keys=True)`` text.
"""

from __future__ import annotations

import sqlite3

_V1 = """
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,
    guild_id        TEXT NOT NULL,
    channel_id      TEXT,
    user_id         TEXT NOT NULL,
    prompt          TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    seed            INTEGER NOT NULL,
    steps           INTEGER NOT NULL,
    width           INTEGER NOT NULL,
    height          INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    guidance        REAL NOT NULL,
    model           TEXT NOT NULL,
    parent_job_id   TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    state           TEXT NOT NULL,
    error           TEXT,
    grid_path       TEXT,
    grid_sha256     TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL
) STRICT;
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
-- Every foreign key gets an index, or deleting a parent row scans the child table.
CREATE INDEX jobs_parent ON jobs (parent_job_id);

-- One row per state change; the creation of a job is the row whose from_state is NULL.
CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    at         REAL NOT NULL,
    detail     TEXT
) STRICT;
CREATE INDEX job_events_job ON job_events (job_id, id);

-- Images that were allowed or flagged and therefore stored (a blocked image is never stored).
CREATE TABLE outputs (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 0),
    path       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    seed       INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
) STRICT;

-- One verdict per generated image, blocked ones included: the audit trail keeps every score.
CREATE TABLE verdicts (
    job_id         TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL CHECK (idx >= 0),
    stage          TEXT NOT NULL,
    decision       TEXT NOT NULL,
    category       TEXT,
    reason         TEXT NOT NULL,
    scores         TEXT NOT NULL CHECK (json_valid(scores)),
    model_versions TEXT NOT NULL CHECK (json_valid(model_versions)),
    created_at     REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
) STRICT;

CREATE TABLE guild_settings (
    guild_id   TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL CHECK (json_valid(value)),
    updated_at REAL NOT NULL,
    PRIMARY KEY (guild_id, key)
) STRICT;

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    guild_id TEXT,
    actor_id TEXT,
    action   TEXT NOT NULL,
    target   TEXT,
    detail   TEXT NOT NULL CHECK (json_valid(detail))
) STRICT;
CREATE INDEX audit_log_guild ON audit_log (guild_id);
"""

# v2: a heavily blurred preview of every flagged image, for moderators' review cards.
_V2 = """
ALTER TABLE outputs ADD COLUMN preview_path TEXT;
"""

# v3: the request came from an age-restricted channel (may allow suggestive content, never more).
_V3 = """
ALTER TABLE jobs ADD COLUMN age_restricted INTEGER NOT NULL DEFAULT 0;
"""

# v4: members' votes for their favourite image of a grid; one vote per member per grid.
_V4 = """
CREATE TABLE votes (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    guild_id TEXT NOT NULL,
    idx      INTEGER NOT NULL,
    at       REAL NOT NULL,
    PRIMARY KEY (job_id, user_id)
) STRICT;
CREATE INDEX votes_guild_at ON votes (guild_id, at);
"""

# v5: variations and upscales start from an earlier output (image-to-image at a strength).
_V5 = """
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'imagine' CHECK (kind IN ('imagine', 'vary', 'upscale'));
ALTER TABLE jobs ADD COLUMN source_job_id TEXT;
ALTER TABLE jobs ADD COLUMN source_index INTEGER;
ALTER TABLE jobs ADD COLUMN strength REAL;
"""

# v6: the provenance registry. Each stored image's 64-bit perceptual hash (signed two's complement:
# SQLite integers are signed; nearest-hash search loads the column and counts bits in numpy, since
# SQLite has no popcount and a 10-bit radius is too wide for band indexes), the 48-bit payload of its
# invisible watermark (looked up exactly: indexed), whether it carries a C2PA manifest; sha256 lookups
# need an index too.
_V6 = """
ALTER TABLE outputs ADD COLUMN phash INTEGER;
ALTER TABLE outputs ADD COLUMN payload_id INTEGER;
ALTER TABLE outputs ADD COLUMN c2pa INTEGER NOT NULL DEFAULT 0;
CREATE INDEX outputs_sha256 ON outputs (sha256);
CREATE INDEX outputs_payload ON outputs (payload_id) WHERE payload_id IS NOT NULL;
CREATE INDEX jobs_grid_sha256 ON jobs (grid_sha256) WHERE grid_sha256 IS NOT NULL;
"""

# v7: moderation. A review per flagged job or appeal (the first decision wins: it only moves a
# ``pending`` row), members' strikes and bans from the bot per server, and the rerun of an approved
# appeal remembers the job it appeals (its non-hard blocks become flags: a moderator still sees it).
# A decision is delivered (posted, the requester told, the card updated) by the bot process, whichever
# process decided it; ``delivered_at`` is that outbox's mark.
# Reviews, strikes and bans have no foreign key to jobs: they outlive a member's /privacy delete,
# with the member's id replaced by a pseudonym.
_V7 = """
ALTER TABLE jobs ADD COLUMN appeal_of TEXT;
CREATE TABLE reviews (
    job_id          TEXT PRIMARY KEY NOT NULL,
    guild_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('flag', 'appeal')),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    category        TEXT,
    requested_at    REAL NOT NULL,
    decided_by      TEXT,
    decided_at      REAL,
    decision        TEXT,
    card_channel_id TEXT,
    card_message_id TEXT,
    delivered_at    REAL
) STRICT;
CREATE INDEX reviews_guild_state ON reviews (guild_id, state, requested_at);
-- Decided reviews whose outcome the bot has not yet posted (a decision in the dashboard, or a crash).
CREATE INDEX reviews_undelivered ON reviews (decided_at) WHERE state != 'pending' AND delivered_at IS NULL;
CREATE TABLE strikes (
    id           INTEGER PRIMARY KEY,
    guild_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    job_id       TEXT,
    moderator_id TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           REAL NOT NULL
) STRICT;
CREATE INDEX strikes_user ON strikes (guild_id, user_id, at);
CREATE TABLE bans (
    guild_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    until        REAL,
    moderator_id TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id)
) STRICT;
-- One-time dashboard login tokens already used (bot/dashboard/auth.py): a nonce may log in once.
-- Rows past expires_at can be deleted; the token would be refused as expired anyway.
CREATE TABLE dashboard_logins (
    nonce      TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    guild_id   TEXT NOT NULL,
    used_at    REAL NOT NULL,
    expires_at REAL NOT NULL
) STRICT;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
"""Migration scripts in order; the schema version of a fully migrated database is ``len(MIGRATIONS)``."""

SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """Split a migration script into single SQL statements.

    ``executescript`` would do this for us, but it commits any open transaction first, which would
    break running a migration and its version bump as one transaction. ``sqlite3.complete_statement``
    knows SQL's quoting and ``CREATE TRIGGER ... END`` bodies, so a ``;`` inside those never splits.

    Raises:
        ValueError: the script ends with an incomplete statement.
    """
    result: list[str] = []
    *pieces, tail = script.split(";")
    pending = ""
    for piece in pieces:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if _has_code(pending):
                result.append(pending.strip())
            pending = ""
    leftover = pending + tail
    if _has_code(leftover):
        raise ValueError(f"migration script ends with an incomplete statement: {leftover.strip()[:80]!r}")
    return result


def _has_code(text: str) -> bool:
    """True unless ``text`` is only whitespace, ``;`` and ``--`` comments."""
    lines = (line.split("--", 1)[0] for line in text.splitlines())
    return any(line.strip().strip(";").strip() for line in lines)
