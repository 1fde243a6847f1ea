"""Knowledge packages: a learner's fast memory as one file, checked before anything trusts it.

The file is a JSON manifest + safetensors arrays (no pickle). The manifest records the format
version, learner kind, hyper-parameters and labels, the backbone fingerprint, provenance (site,
time, examples per class), an integrity hash over manifest and arrays, and an optional Ed25519
signature of that hash. Saved recognizers use the same format: a package is what a site saves.
"""

import hashlib
import json
import os

import numpy as np

from edgelearn.errors import ModelFileError, SignatureError
from edgelearn.files import atomic_write_bytes, container_bytes, parse_container, read_container
from edgelearn.knowledge.keys import SiteKey, TrustStore

FORMAT = "edgelearn.knowledge"
VERSION = 1
MAX_CLASSES = 100_000
MAX_FEATURES = 65_536
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


def read_package(path: str | os.PathLike, *, trust: TrustStore | None = None,
                 require_signature: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and check a package; each kind of problem is refused with its own message.

    ``require_signature``: refuse unsigned packages and signers outside ``trust`` (what a site
    does with knowledge from elsewhere). Otherwise a signature is checked whenever ``trust`` is given.
    """
    return check_package(*read_container(path), path, trust=trust, require_signature=require_signature)


def parse_package(data: bytes, name: str = "<package>", *, trust: TrustStore | None = None,
                  require_signature: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`read_package` for bytes (an upload, a stored version)."""
    return check_package(*parse_container(data, name), name, trust=trust, require_signature=require_signature)


def check_package(manifest: dict, arrays: dict[str, np.ndarray], path, *, trust: TrustStore | None = None,
                  require_signature: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an edgelearn knowledge package (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise ModelFileError(f"{path}: package format version {manifest.get('version')} is not supported "
                             f"(this edgelearn reads version {VERSION})")
    _check_sizes(path, manifest)
    expected = manifest.get("integrity", {}).get("sha256")
    if expected != digest(manifest, arrays):
        raise ModelFileError(f"{path}: integrity check failed: the file was damaged or altered")
    signature = manifest.get("signature")
    if require_signature and signature is None:
        raise SignatureError(f"{path}: the package is not signed (unsigned packages need --allow-unsigned)")
    if require_signature and trust is None:
        raise SignatureError(f"{path}: no trust list to check the signature against")
    if signature is not None and trust is not None:
        manifest["verified_site"] = trust.verify(expected.encode(), signature)
    return manifest, arrays


def _check_sizes(path, manifest: dict) -> None:
    learner = manifest.get("learner")
    if not isinstance(learner, dict) or not isinstance(learner.get("classes", []), list):
        raise ModelFileError(f"{path}: malformed manifest (no learner or class list)")
    n_classes, n_features = len(learner.get("classes", [])), learner.get("n_features", 1)
    if n_classes > MAX_CLASSES or not isinstance(n_features, int) or not 0 < n_features <= MAX_FEATURES:
        raise ModelFileError(f"{path}: implausible sizes ({n_classes} classes, {n_features} features; "
                             f"limits {MAX_CLASSES} and {MAX_FEATURES})")
