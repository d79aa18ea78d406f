"""Content Credentials: real c2pa-rs signing and validation with generated certificates."""

from __future__ import annotations

import io
import json
import stat
import struct
import zlib
from pathlib import Path

import c2pa
import numpy as np
import pytest
from PIL import Image

from safety.credentials import (
    SIGNER_CHAIN,
    SIGNER_KEY,
    TRAINED_ALGORITHMIC_MEDIA,
    ContentCredentials,
    CredentialFields,
    issue_identity,
)

FIELDS = CredentialFields("abc123-0", "builtin:tiny", "0.1.0")


def png(seed: int = 0, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks as (type, body), in order."""
    result, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        result.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return result


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in parts:
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return out


def with_pixels_of(signed: bytes, other: bytes) -> bytes:
    """``signed`` with its image data replaced by ``other``'s: edited pixels, manifest kept."""
    new_idat = [part for part in chunks(other) if part[0] == b"IDAT"]
    parts: list[tuple[bytes, bytes]] = []
    for part in chunks(signed):
        if part[0] == b"IDAT":
            parts.extend(new_idat)
            new_idat = []
        else:
            parts.append(part)
    return assemble(parts)


def manifest_json(data: bytes) -> str:
    with c2pa.Reader("image/png", io.BytesIO(data)) as reader:
        return json.dumps(reader.get_active_manifest())


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> ContentCredentials:
    return ContentCredentials.open(tmp_path_factory.mktemp("data") / "keys")


def test_sign_and_read_round_trip(credentials: ContentCredentials) -> None:
    original = png()
    signed = credentials.sign(original, FIELDS)
    report = credentials.read(signed)
    assert report.present and report.valid and report.trusted and report.ours
    assert (report.output_id, report.model, report.claim_generator) == ("abc123-0", "builtin:tiny", "imaginebot 0.1.0")
    assert report.errors == () and report.state == "Trusted"
    # the pixels are untouched; the manifest says how the image was made
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(signed))), np.asarray(Image.open(io.BytesIO(original))))
    manifest = json.loads(manifest_json(signed))
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert manifest["claim_generator_info"][0]["name"] == "imaginebot"


def test_edited_pixels_fail_validation(credentials: ContentCredentials) -> None:
    signed = credentials.sign(png(seed=1), FIELDS)
    tampered = with_pixels_of(signed, png(seed=2))
    assert Image.open(io.BytesIO(tampered)).size == (48, 48)  # still a good PNG, other pixels
    report = credentials.read(tampered)
    assert report.present and not report.valid and not report.ours
    assert report.state == "Invalid"
    assert any("dataHash.mismatch" in error for error in report.errors)


def test_unsigned_files_and_other_signers(credentials: ContentCredentials, tmp_path: Path) -> None:
    assert not credentials.read(png()).present
    assert not credentials.read(b"not an image").present
    path = tmp_path / "other.png"
    path.write_bytes(ContentCredentials.open(tmp_path / "other-keys").sign(png(), FIELDS))
    report = credentials.read(path)
    # a valid manifest by a signer we do not know: valid, but neither trusted nor ours
    assert report.present and report.valid and not report.trusted and not report.ours
    assert report.output_id == "abc123-0"


def test_no_personal_data_unless_opted_in(credentials: ContentCredentials) -> None:
    plain = credentials.sign(png(), FIELDS)
    text = manifest_json(plain)
    assert "prompt" not in text and "user" not in text
    assert credentials.read(plain).prompt is None
    opted_in = CredentialFields("abc123-0", "builtin:tiny", "0.1.0", prompt="a lighthouse at dusk")
    assert credentials.read(credentials.sign(png(), opted_in)).prompt == "a lighthouse at dusk"


def test_local_keys_are_private_and_reused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = ContentCredentials.open(keys)
    directory = keys / "c2pa"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("ca.key", SIGNER_KEY):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    chain = (directory / SIGNER_CHAIN).read_bytes()
    second = ContentCredentials.open(keys)  # a later run: the same identity, not a new CA
    assert (directory / SIGNER_CHAIN).read_bytes() == chain
    assert second.read(first.sign(png(), FIELDS)).ours


def test_operator_provided_chain(tmp_path: Path) -> None:
    _, _, chain, key = issue_identity("example.org signer")
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    operator = ContentCredentials.open(tmp_path / "keys", chain=tmp_path / "chain.pem", key=tmp_path / "key.pem")
    report = operator.read(operator.sign(png(), FIELDS))
    assert report.valid and report.trusted and report.ours
    assert not (tmp_path / "keys" / "c2pa").exists()  # no local CA generated
    assert not ContentCredentials.open(tmp_path / "keys").read(operator.sign(png(), FIELDS)).ours


def test_bad_operator_credentials_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both a certificate chain and a key"):
        ContentCredentials.open(tmp_path, chain=tmp_path / "chain.pem")
    (tmp_path / "chain.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not PEM certificates"):
        ContentCredentials.open(tmp_path, chain=tmp_path / "chain.pem", key=tmp_path / "key.pem")
    with pytest.raises(ValueError, match="cannot read"):
        ContentCredentials.open(tmp_path, chain=tmp_path / "missing.pem", key=tmp_path / "key.pem")
