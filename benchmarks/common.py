"""Shared benchmark helpers: environment record, cached features of the shared data sets, output files."""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from edgelearn.backbones import build_backbone
from edgelearn.data import FeatureCache, FolderDataset
from edgelearn.learners import make_learner
from edgelearn.recognizer import Recognizer

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGELEARN_SHARED", ROOT.parents[1] / "shared"))
RESULTS = ROOT / "results"


def environment() -> dict:
    import torch

    import edgelearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "edgelearn": getattr(edgelearn, "__version__", "dev"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def default_weights() -> str:
    return os.environ.get("EDGELEARN_WEIGHTS") or str(SHARED / "models" / "mobilenet_v2_imagenet.pt")


def dataset_features(name: str, input_size: int, weights: str, data_root: Path | None = None) -> dict:
    """Features of a data set's train and test splits (embedded once, then cached by content)."""
    backbone = build_backbone("mobilenet_v2", weights=weights, input_size=input_size)
    rec = Recognizer(backbone, make_learner("ncm"))
    cache = FeatureCache(backbone.fingerprint_id)
    out = {"fingerprint": backbone.fingerprint}
    for split in ("train", "test"):
        ds = FolderDataset.scan(Path(data_root or SHARED / "data") / name, split)
        out[split] = (rec.embed_files(ds.paths, cache=cache, progress=True), np.array(ds.labels, dtype=object), ds)
    return out


def per_class_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` example indices per class drawn with ``seed`` (the paper's 100 random images per class)."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in sorted(set(labels))]
    return np.sort(np.concatenate(chosen))


def mean_std(values) -> dict:
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(len(values))}


def write_results(name: str, summary: dict, config: dict, results, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"summary": summary, "config": config, "env": environment(), "results": results}
    path.write_text(json.dumps(payload, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text(markdown)
    return path


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: seeds, weights, and where the data sets are."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--weights", default=default_weights())
    parser.add_argument("--data", type=Path, default=SHARED / "data",
                        help="folder holding imagenette/ and neu_cls/ (each with train/ and test/)")
    return parser


def save_figure(fig, ax, name: str) -> None:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
