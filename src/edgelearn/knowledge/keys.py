"""Site identities: Ed25519 key pairs, and the trust list of the sites whose knowledge we accept.

Each site signs what it exports with its private key; every other site keeps the public keys of the
sites it trusts in a folder (one ``<site>.pub`` per site). Ed25519 rather than a shared HMAC key:
a site can check a package without being able to forge one, and one leaked key exposes one site.
"""

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgelearn.errors import SignatureError
from edgelearn.files import write_private


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SiteKey:
    """A site's private signing key."""

    site: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, site: str) -> "SiteKey":
        return cls(site, Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SiteKey":
        path = Path(path)
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SignatureError(f"cannot read private key {path}: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return cls(path.stem, private)

    def save(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``<site>.key`` (private, mode 0600) and ``<site>.pub`` (share this one)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        private_path, public_path = directory / f"{self.site}.key", directory / f"{self.site}.pub"
        if private_path.exists():
            raise SignatureError(f"{private_path} exists already; refusing to overwrite a site key")
        pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        write_private(private_path, pem)
        public_path.write_bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return private_path, public_path

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, message: bytes) -> dict:
        signature = base64.b64encode(self.private.sign(message)).decode()
        return {"algorithm": "ed25519", "site": self.site, "key_id": self.key_id, "value": signature}


class TrustStore:
    """Public keys of trusted sites, read from a folder of ``<site>.pub`` PEM files."""

    def __init__(self, keys: dict[str, tuple[str, Ed25519PublicKey]] | None = None):
        self.keys = dict(keys or {})  # key_id -> (site, public key)

    def add(self, site: str, public: Ed25519PublicKey) -> "TrustStore":
        self.keys[key_id(public)] = (site, public)
        return self

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TrustStore":
        directory = Path(directory)
        if not directory.is_dir():
            raise SignatureError(f"trust folder not found: {directory}")
        store = cls()
        for path in sorted(directory.glob("*.pub")):
            try:
                public = serialization.load_pem_public_key(path.read_bytes())
            except ValueError as exc:
                raise SignatureError(f"cannot read public key {path}: {exc}") from exc
            if isinstance(public, Ed25519PublicKey):
                store.add(path.stem, public)
        return store

    def verify(self, message: bytes, signature: dict) -> str:
        """The trusted site that signed ``message``, or :class:`SignatureError`."""
        if signature.get("algorithm") != "ed25519":
            raise SignatureError(f"unsupported signature algorithm {signature.get('algorithm')!r}")
        site, public = self.keys.get(signature.get("key_id", ""), (None, None))
        if public is None:
            raise SignatureError(f"signed by site {signature.get('site')!r} (key {signature.get('key_id')}), "
                                 "which is not in the trust list")
        try:
            public.verify(base64.b64decode(signature["value"]), message)
        except (InvalidSignature, ValueError, KeyError) as exc:
            raise SignatureError("the signature does not match the package: it was altered after signing") from exc
        return site
