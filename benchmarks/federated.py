"""Federated training of the network's last layers: FedAvg against TeAM (paper 004), on this CPU.

    python benchmarks/federated.py             # ~25 min on 2 cores

Imagenette (10 classes, 2,000 training / 500 test images, at 128 px), ImageNet MobileNetV2: the shared
layers (features[:17]) frozen, the decoupled layers (block 17, the last 1x1 convolution, a new
classifier) trained by 4 sites, each a real Flower SuperNode process on loopback (one SuperLink,
`edgelearn.federation.deploy`). Splits:
- non-IID: site i holds the 4 classes 3i .. 3i+3 (mod 10); a class held by two sites is split
  between them (each site sees 4 of the 10 classes);
- IID: each site a random quarter of every class.
--rounds rounds of --local-epochs local epochs (SGD, lr 0.01, momentum 0.9, batch 32). TeAM's
paths keep --path-fraction of each decoupled layer's filters per class. After every round the
server scores the global model on the 500 test images. Bytes = serialised arrays sent to and
received from the sites. Reference: the same layers trained centrally on all images for
rounds x local-epochs epochs. Writes benchmarks/results/federated.{json,md,png}.
"""

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.data import FolderDataset  # noqa: E402
from edgelearn.federation.deploy import federate  # noqa: E402
from edgelearn.federation.training.features import accuracy, local_training, shared_features  # noqa: E402
from edgelearn.federation.training.heads import DenseHead  # noqa: E402
from edgelearn.federation.training.strategies import PATH_FRACTION  # noqa: E402
from edgelearn.files import atomic_write_figure  # noqa: E402


def split_sites(data: Path, work: Path, sites: int, iid: bool, seed: int = 0) -> dict[str, Path]:
    """Site folders of symbolic links into ``data``'s train/ split."""
    ds = FolderDataset.scan(data, "train")
    rng = np.random.default_rng(seed)
    shutil.rmtree(work, ignore_errors=True)
    holders = {c: list(range(sites)) if iid else [i for i in range(sites) if k in {(3 * i + j) % len(ds.classes)
                                                                                    for j in range(4)}]
               for k, c in enumerate(ds.classes)}
    for c, owners in holders.items():
        paths = [p for p, label in zip(ds.paths, ds.labels, strict=True) if label == c]
        for owner, part in zip(owners, np.array_split(rng.permutation(len(paths)), len(owners)), strict=True):
            folder = work / f"site{owner}" / "train" / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                (folder / Path(paths[i]).name).symlink_to(Path(paths[i]).resolve())
    return {f"site{i}": work / f"site{i}" for i in range(sites)}


def centralised(data: Path, work: Path, args) -> float:
    """The same decoupled layers trained on all training images in one place (the reference)."""
    features, labels, layers = shared_features(data, "train", weights=args.weights, input_size=args.input_size,
                                               cache=work / "central")
    test_features, test_labels, _ = shared_features(data, "test", weights=args.weights, input_size=args.input_size,
                                                    cache=work / "central")
    classes = sorted(set(labels))
    head = DenseHead(layers, len(classes))
    local_training(head, features, torch.tensor([classes.index(c) for c in labels]),
                   epochs=args.rounds * args.local_epochs, lr=0.01, seed=0)
    return accuracy(head, classes, test_features, test_labels)


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", default="imagenette")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--path-fraction", type=float, default=PATH_FRACTION)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgelearn-federated"))
    args = parser.parse_args()
    data = args.data / args.dataset
    runs = {}
    for split in ("non-IID", "IID"):
        sites = split_sites(data, args.work / split, args.sites, iid=split == "IID")
        for strategy in ("fedavg", "team"):
            name = f"{strategy} {split}"
            print(f"{name}: {args.rounds} rounds with {args.sites} sites", flush=True)
            started = time.perf_counter()
            history = federate(sites, args.work / f"{split}-{strategy}", rounds=args.rounds, app="training",
                               timeout=3600, config={"strategy": strategy, "weights": args.weights,
                                                     "input-size": args.input_size, "local-epochs": args.local_epochs,
                                                     "lr": 0.01, "path-fraction": args.path_fraction,
                                                     "test-data": str(data.resolve())})
            history["seconds"] = time.perf_counter() - started
            runs[name] = history
            last = history["rounds"][-1]
            print(f"  {name}: accuracy {last['accuracy']:.2%}, "
                  f"{(last['bytes_down'] + last['bytes_up']) / 2**20:.2f} MiB per round", flush=True)
    reference = centralised(data, args.work, args)
    print(f"centralised: {reference:.2%}")

    def per_round(name):
        r = runs[name]["rounds"][-1]
        return r["bytes_down"] + r["bytes_up"]

    summary = {name: {"final_accuracy": h["rounds"][-1]["accuracy"], "best_accuracy": max(
        r["accuracy"] for r in h["rounds"][1:]), "bytes_per_round": per_round(name),
        "trainable_parameters": h["trainable_parameters"]} for name, h in runs.items()}
    for split in ("non-IID", "IID"):
        summary[f"traffic ratio {split}"] = per_round(f"fedavg {split}") / per_round(f"team {split}")
    summary["centralised"] = reference
    lines = [f"# FedAvg vs TeAM ({args.dataset}, {args.sites} sites, {args.rounds} rounds x {args.local_epochs} "
             f"local epochs, {args.input_size} px, path fraction {args.path_fraction})", "",
             "| run | round 0 | " + " | ".join(f"r{r}" for r in range(1, args.rounds + 1)) +
             " | MiB per round | parameters in the model |", "|---" * (args.rounds + 4) + "|"]
    for name, h in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r['accuracy']:.1f}" for r in h["rounds"]) +
                     f" | {per_round(name) / 2**20:.2f} | {h['trainable_parameters']:,} |")
    lines += ["", f"Traffic FedAvg / TeAM per round: non-IID {summary['traffic ratio non-IID']:.1f}x, "
              f"IID {summary['traffic ratio IID']:.1f}x. TeAM's path selection (round 0) costs "
              f"{runs['team non-IID']['query_bytes'] / 2**10:.0f} KiB once. Centralised reference: {reference:.2%}."]
    path = common.write_results("federated", summary, {k: str(v) for k, v in vars(args).items()}, runs,
                                "\n".join(lines) + "\n")
    _plot(runs, common.RESULTS / "federated.png")
    print("\n".join(lines))
    print(f"wrote {path}")


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, h in runs.items():
        rounds = [r["round"] for r in h["rounds"]]
        a.plot(rounds, [r["accuracy"] for r in h["rounds"]], "o-", label=name)
        b.plot(rounds[1:], [(r["bytes_down"] + r["bytes_up"]) / 2**20 for r in h["rounds"][1:]], "o-", label=name)
    a.set(xlabel="round", ylabel="test accuracy", title="accuracy")
    b.set(xlabel="round", ylabel="MiB", title="bytes per round", yscale="log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    atomic_write_figure(path, fig)


if __name__ == "__main__":
    main()
