"""Knowledge packages: a learner's fast memory as one file, checked before anything trusts it.

The file is a JSON manifest + safetensors arrays (no pickle). The manifest records the format
version, learner kind, hyper-parameters and labels, the backbone fingerprint, provenance (site,
time, examples per class), an integrity hash over manifest and arrays, and an optional Ed25519
signature of that hash. Saved recognizers use the same format: a package is what a site saves.
"""

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from edgelearn.errors import ModelFileError, SignatureError
from edgelearn.files import atomic_write_bytes, container_bytes, parse_container, read_container
from edgelearn.knowledge.keys import SiteKey, TrustStore
from edgelearn.knowledge.schema import check_labels, check_learner, check_manifest

FORMAT = "edgelearn.knowledge"
VERSION = 1
UNSIGNED_FIELDS = ("integrity", "signature")


def digest(manifest: dict, arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the canonical manifest (without integrity and signature) and every array."""
    h = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k not in UNSIGNED_FIELDS}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_package(path: str | os.PathLike, manifest: dict, arrays: dict[str, np.ndarray],
                  key: SiteKey | None = None) -> None:
    """Write atomically, with an integrity hash and, given a site key, a signature."""
    atomic_write_bytes(path, package_bytes(manifest, arrays, key))


def package_bytes(manifest: dict, arrays: dict[str, np.ndarray], key: SiteKey | None = None) -> bytes:
    """The package as bytes (what :func:`write_package` writes)."""
    manifest = {k: v for k, v in manifest.items() if k not in UNSIGNED_FIELDS}
    manifest.update(format=FORMAT, version=VERSION)
    manifest["integrity"] = {"sha256": digest(manifest, arrays)}
    if key is not None:
        manifest["signature"] = key.sign(manifest["integrity"]["sha256"].encode())
    return container_bytes(manifest, arrays)


@dataclass(frozen=True)
class ImportPolicy:
    """What a site accepts from elsewhere: packages signed by a site in ``trust``; unsigned ones only
    with ``allow_unsigned``. A signature that is present is always checked, so a made-up one never
    passes: with no trust list to check it against, it is refused."""

    trust: TrustStore | None = None
    allow_unsigned: bool = False

    def verify(self, manifest: dict, path) -> str | None:
        """The trusted site that signed the package, None for an allowed unsigned one, else :class:`SignatureError`."""
        signature = manifest.get("signature")
        if signature is None:
            if self.allow_unsigned:
                return None
            hint = "" if self.trust is not None else " and give a trust folder (--trust DIR)"
            raise SignatureError(f"{path}: the package is not signed; knowledge from other sites must be "
                                 f"signed by a trusted site{hint} (unsigned packages need --allow-unsigned)")
        if self.trust is None:
            raise SignatureError(f"{path}: signed by site {signature['site']!r}, but there is no trust folder to "
                                 "check it (give --trust DIR holding that site's .pub key)")
        try:
            return self.trust.verify(manifest["integrity"]["sha256"].encode(), signature)
        except SignatureError as exc:
            raise SignatureError(f"{path}: {exc}") from None


def read_package(path: str | os.PathLike, *, policy: ImportPolicy | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a package; each kind of problem is refused with its own message.

    ``policy``: knowledge from elsewhere, accepted only as it says (signatures); ``None``: one's own
    file (a saved model, a stored version), whose signature, if any, is not checked. Everything
    else (schema, sizes, integrity) is always checked.
    """
    return check_package(*read_container(path), path, policy=policy)


def parse_package(data: bytes, name: str = "<package>", *, policy: ImportPolicy | None = None
                  ) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`read_package` for bytes (an upload, a stored version)."""
    return check_package(*parse_container(data, name), name, policy=policy)


def check_package(manifest: dict, arrays: dict[str, np.ndarray], path, *, policy: ImportPolicy | None = None
                  ) -> tuple[dict, dict[str, np.ndarray]]:
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an edgelearn knowledge package (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise ModelFileError(f"{path}: package format version {manifest.get('version')} is not supported "
                             f"(this edgelearn reads version {VERSION})")
    check_manifest(manifest, path)
    check_learner(manifest["learner"], arrays, path)
    check_labels(manifest, path)
    if manifest["integrity"]["sha256"] != digest(manifest, arrays):
        raise ModelFileError(f"{path}: integrity check failed: the file was damaged or altered")
    if policy is not None:
        manifest["verified_site"] = policy.verify(manifest, path)
    return manifest, arrays
