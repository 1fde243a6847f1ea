"""One site of a federation: its data folder, its own knowledge, and what it received."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgelearn.data import FeatureCache, FolderDataset
from edgelearn.data.cache import content_hash
from edgelearn.evaluation import evaluate_features
from edgelearn.knowledge import ImportPolicy, SiteKey, TrustStore
from edgelearn.recognizer import Recognizer


@dataclass
class Site:
    """A site keeps ``own.edge`` (its own data only: what it shares) and ``merged.edge`` (what it uses)."""

    name: str
    data: Path
    workdir: Path
    config: dict
    key: SiteKey | None = None
    policy: ImportPolicy = ImportPolicy()  # what it accepts from the server: signed by a trusted site by default

    @classmethod
    def from_config(cls, node: dict, run: dict) -> "Site":
        """Node config (``site``, ``data``, ``workdir``, ``key``, ``trust``) or, in simulation,
        ``partition-id`` picking one of the run config's comma-separated ``site-data`` folders."""
        if "data" in node:
            name, data = str(node.get("site", Path(node["data"]).name)), Path(node["data"])
        else:
            folders = str(run["site-data"]).split(",")
            data = Path(folders[int(node["partition-id"])])
            name = data.name
        workdir = Path(node.get("workdir") or Path(run.get("workdir", "federation")) / name)
        key_path = node.get("key") or (Path(run["keys-dir"]) / f"{name}.key" if run.get("keys-dir") else None)
        key = SiteKey.load(key_path) if key_path else None
        trust_dir = node.get("trust") or run.get("trust-dir")
        policy = ImportPolicy(TrustStore.load(trust_dir) if trust_dir else None, bool(run.get("allow-unsigned")))
        return cls(name, data, workdir, dict(run), key, policy)

    def _recognizer(self) -> Recognizer:
        own = self.workdir / "own.edge"
        if own.is_file():
            return Recognizer.load(own, weights=self.config.get("weights") or None)
        cfg, size = self.config, self.config.get("input-size")
        return Recognizer.create(cfg.get("backbone", "mobilenet_v2"), learner=cfg.get("learner", "slda"),
                                 weights=cfg.get("weights") or None, input_size=int(size) if size else None)

    def learn_new(self) -> tuple[bytes, int]:
        """Learn the images of ``data/train`` not learned before; returns (own package bytes, new images)."""
        rec = self._recognizer()
        seen_path = self.workdir / "learned.json"
        seen = set(json.loads(seen_path.read_text())) if seen_path.is_file() else set()
        train, _ = FolderDataset.splits(self.data)
        hashes = [content_hash(p) for p in train.paths]
        new = [i for i, h in enumerate(hashes) if h not in seen]
        if new:
            subset = train.subset(new)
            features = rec.embed_files(subset.paths, cache=FeatureCache(rec.backbone.fingerprint_id))
            rec.learn_features(features, subset.labels)
        path = rec.save(self.workdir / "own.edge", key=self.key, site=self.name)
        seen_path.write_text(json.dumps(sorted(seen | {hashes[i] for i in new})))
        return path.read_bytes(), len(new)

    def receive(self, package: bytes) -> dict:
        """Install the merged knowledge (checked like any package) and evaluate it on local test data."""
        path = self.workdir / "merged.edge"
        tmp = path.with_suffix(".incoming")
        tmp.write_bytes(package)
        rec = Recognizer.load(tmp, weights=self.config.get("weights") or None, policy=self.policy)
        os.replace(tmp, path)
        _, test = FolderDataset.splits(self.data)
        metrics = {"classes": len(rec.classes)}
        if test is not None:
            features = rec.embed_files(test.paths, cache=FeatureCache(rec.backbone.fingerprint_id))
            metrics["accuracy"] = evaluate_features(rec, features, test.labels)["accuracy"]
        return metrics
