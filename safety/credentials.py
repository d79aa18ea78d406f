"""Content Credentials (C2PA): a signed manifest in every stored image says who made it and how.

Each manifest holds the claim generator (imaginebot + version), one ``c2pa.created`` action with the
IPTC digital source type ``trainedAlgorithmicMedia``, and an ``org.imaginebot.output`` assertion with
the output id and the model. Nothing personal goes in (no prompt, no user id) unless the caller
passes a prompt because the guild opted in.

Signing keys are either an operator's certificate chain + private key (PEM files), or, by default,
a local CA and a signing certificate generated on first run under ``<data_dir>/keys/c2pa/``
(directory 0700, private keys 0600). c2pa-rs refuses self-signed signing certificates, so the local
identity is two certificates: a CA (``keyCertSign``) and a leaf it issues (``digitalSignature``, EKU
``emailProtection``), both ECDSA P-256 (ES256).

Reading validates the manifest (claim signature, hashes of the asset's bytes: edited pixels fail)
and the signer's chain against *our* trust anchor (the last certificate of our chain). So a report
tells apart: no manifest; an invalid one; a valid one by an unknown signer (``valid`` but not
``trusted``); and ours (trusted, and signed by our very signing certificate).
"""

from __future__ import annotations

import datetime
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from safety.files import write_atomic

GENERATOR = "imaginebot"
OUTPUT_ASSERTION = "org.imaginebot.output"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SIGNER_CHAIN = "signer-chain.pem"
SIGNER_KEY = "signer.key"
_CA_DAYS = 20 * 365
_SIGNER_DAYS = 5 * 365
# No thumbnail in the manifest: it would add a JPEG copy of the image (tens of KB, and most of the
# signing time) that tells a verifier nothing the pixels do not.
_BUILD_SETTINGS: Mapping[str, Any] = {"builder": {"thumbnail": {"enabled": False}}}
_VALID_STATES = ("Valid", "Trusted")
_UNTRUSTED = "signingCredential.untrusted"


@dataclass(frozen=True)
class CredentialFields:
    """What one manifest says. ``prompt`` only when the guild opted in to personal data."""

    output_id: str
    model: str
    version: str
    prompt: str | None = None


@dataclass(frozen=True)
class CredentialReport:
    """What reading a file's Content Credentials found.

    Attributes:
        present: the file carries a C2PA manifest.
        valid: its signature and the hashes of the file's bytes check out (an edited file is not).
        trusted: the signer chains to our trust anchor.
        ours: valid, trusted and signed by our signing certificate.
        state: c2pa's validation state (``Invalid``, ``Valid``, ``Trusted``), None without a manifest.
        errors: c2pa's failure codes and explanations.
    """

    present: bool
    valid: bool = False
    trusted: bool = False
    ours: bool = False
    state: str | None = None
    output_id: str | None = None
    model: str | None = None
    claim_generator: str | None = None
    prompt: str | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class SigningIdentity:
    """A PEM certificate chain (signing certificate first) and its private key."""

    chain_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never print a private key
        return f"SigningIdentity(chain={len(self.chain_pem)} bytes, key=<hidden>)"

    @classmethod
    def from_files(cls, chain: Path, key: Path) -> SigningIdentity:
        """An operator's chain + key. Raises ValueError naming a file that is unreadable or not PEM."""
        try:
            identity = cls(chain.read_bytes(), key.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read C2PA credentials: {exc}") from None
        identity.certificates()  # fail now, naming the file, rather than at the first signature
        identity.private_key()
        return identity

    @classmethod
    def local(cls, directory: Path) -> SigningIdentity:
        """The local CA + signing certificate in ``directory``, generated on first use."""
        chain, key = directory / SIGNER_CHAIN, directory / SIGNER_KEY
        if not (chain.exists() and key.exists()):
            _generate_local(directory)
        return cls(chain.read_bytes(), key.read_bytes())

    def certificates(self) -> list[x509.Certificate]:
        try:
            certificates = x509.load_pem_x509_certificates(self.chain_pem)
        except ValueError as exc:
            raise ValueError(f"C2PA certificate chain is not PEM certificates: {exc}") from None
        return certificates

    def private_key(self) -> Any:
        try:
            return serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"C2PA private key is not an unencrypted PEM key: {exc}") from None

    def algorithm(self) -> c2pa.C2paSigningAlg:
        """The C2PA signing algorithm that fits the key."""
        key = self.private_key()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return c2pa.C2paSigningAlg.ED25519
        if isinstance(key, rsa.RSAPrivateKey):
            return c2pa.C2paSigningAlg.PS256
        if isinstance(key, ec.EllipticCurvePrivateKey):
            by_curve = {"secp256r1": c2pa.C2paSigningAlg.ES256, "secp384r1": c2pa.C2paSigningAlg.ES384,
                        "secp521r1": c2pa.C2paSigningAlg.ES512}  # fmt: skip
            if key.curve.name in by_curve:
                return by_curve[key.curve.name]
        raise ValueError(
            f"C2PA private key type {type(key).__name__} is not supported (EC P-256/384/521, RSA, Ed25519)"
        )


class ContentCredentials:
    """Signs PNG bytes with a C2PA manifest and reads manifests back.

    Thread-safe: every call builds its own c2pa objects (milliseconds), so signing runs on whatever
    executor thread writes the image.
    """

    def __init__(self, identity: SigningIdentity) -> None:
        certificates = identity.certificates()
        if not certificates:
            raise ValueError("C2PA certificate chain is empty")
        self._identity = identity
        self._alg = identity.algorithm()
        self._serial = str(certificates[0].serial_number)
        anchor = certificates[-1].public_bytes(serialization.Encoding.PEM).decode()
        self._read_settings = {"trust": {"trust_anchors": anchor}, "verify": {"verify_trust": True}}

    @classmethod
    def open(cls, keys_dir: Path, *, chain: Path | None = None, key: Path | None = None) -> ContentCredentials:
        """The operator's chain + key if both are given, else the local CA under ``keys_dir/c2pa``."""
        if (chain is None) != (key is None):
            raise ValueError("C2PA credentials need both a certificate chain and a key, or neither")
        if chain is not None and key is not None:
            return cls(SigningIdentity.from_files(chain, key))
        return cls(SigningIdentity.local(keys_dir / "c2pa"))

    def sign(self, png: bytes, fields: CredentialFields) -> bytes:
        """Return ``png`` with a signed manifest embedded. Blocking (a few ms): run off the event loop.

        Raises:
            c2pa.C2paError: the certificate is refused (e.g. self-signed) or the bytes are not a PNG.
        """
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(self._alg, self._identity.chain_pem, self._identity.key_pem, None)
        )
        context = c2pa.Context.from_dict(dict(_BUILD_SETTINGS))
        with signer, context, c2pa.Builder(_manifest(fields), context) as builder:
            out = io.BytesIO()
            builder.sign(signer, "image/png", io.BytesIO(png), out)
        return out.getvalue()

    def read(self, data: bytes | Path) -> CredentialReport:
        """Validate the manifest of a file (bytes or a path). Never raises for a bad file: reports it."""
        raw = data.read_bytes() if isinstance(data, Path) else data
        try:
            with c2pa.Context.from_dict(self._read_settings) as context:
                reader = c2pa.Reader.try_create(None, io.BytesIO(raw), None, context)
                if reader is None:
                    return CredentialReport(present=False)
                with reader:
                    state = reader.get_validation_state()
                    manifest = reader.get_active_manifest() or {}
                    results = reader.get_validation_results() or {}
        except c2pa.C2paError as exc:  # a damaged manifest, or bytes c2pa cannot parse at all
            message = str(exc)
            if message.startswith(("ManifestNotFound", "NotSupported")):  # no manifest, or not a media file
                return CredentialReport(present=False)
            return CredentialReport(present=True, state="Invalid", errors=(message,))
        return self._report(state, manifest, results)

    def _report(self, state: str | None, manifest: Mapping[str, Any], results: Mapping[str, Any]) -> CredentialReport:
        failures = results.get("activeManifest", {}).get("failure", [])
        errors = tuple(f"{f.get('code')}: {f.get('explanation')}" for f in failures)
        # An unknown signer does not make a manifest invalid: it is valid, just not trusted by us.
        valid = state in _VALID_STATES and all(f.get("code") == _UNTRUSTED for f in failures)
        trusted = valid and state == "Trusted"
        signature = manifest.get("signature_info") or {}
        output = _assertion(manifest, OUTPUT_ASSERTION)
        generator = (manifest.get("claim_generator_info") or [{}])[0]
        claim_generator = " ".join(str(generator[k]) for k in ("name", "version") if k in generator) or None
        return CredentialReport(
            present=True,
            valid=valid,
            trusted=trusted,
            ours=trusted and str(signature.get("cert_serial_number")) == self._serial,
            state=state,
            output_id=_str_or_none(output.get("output_id")),
            model=_str_or_none(output.get("model")),
            claim_generator=claim_generator,
            prompt=_str_or_none(output.get("prompt")),
            errors=errors,
        )


def _manifest(fields: CredentialFields) -> str:
    output: dict[str, str] = {"output_id": fields.output_id, "model": fields.model}
    if fields.prompt is not None:
        output["prompt"] = fields.prompt
    created = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": GENERATOR, "version": fields.version},
        "parameters": {"model": fields.model},
    }
    return json.dumps(
        {
            "claim_generator_info": [{"name": GENERATOR, "version": fields.version}],
            "title": f"{fields.output_id}.png",
            "format": "image/png",
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": [created]}},
                {"label": OUTPUT_ASSERTION, "data": output},
            ],
        }
    )


def _assertion(manifest: Mapping[str, Any], label: str) -> Mapping[str, Any]:
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") == label and isinstance(assertion.get("data"), dict):
            data: Mapping[str, Any] = assertion["data"]
            return data
    return {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, GENERATOR),
        ]
    )


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def issue_identity(common_name: str = "imaginebot signer") -> tuple[bytes, bytes, bytes, bytes]:
    """A fresh CA and a signing certificate it issues: ``(ca_pem, ca_key_pem, chain_pem, key_pem)``.

    The shape c2pa-rs accepts: a leaf that is not self-signed, with ``digitalSignature`` key usage
    and an allowed EKU (``emailProtection``), and its CA with ``keyCertSign``.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{common_name} CA"))
        .issuer_name(_name(f"{common_name} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_SIGNER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return (
        ca.public_bytes(pem),
        ca_key.private_bytes(pem, pkcs8, plain),
        leaf.public_bytes(pem) + ca.public_bytes(pem),
        key.private_bytes(pem, pkcs8, plain),
    )


def _generate_local(directory: Path) -> None:
    """Write a new local CA + signing identity: directory 0700, private keys 0600, written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_pem, ca_key, chain, key = issue_identity()
    # The CA key is kept (0600) so an operator can issue a new signing certificate under the same
    # anchor; verifying needs only the chain.
    for name, data, mode in ((CA_KEY, ca_key, 0o600), (SIGNER_KEY, key, 0o600), (CA_CERT, ca_pem, 0o644),
                             (SIGNER_CHAIN, chain, 0o644)):  # fmt: skip
        write_atomic(directory / name, data)
        os.chmod(directory / name, mode)
