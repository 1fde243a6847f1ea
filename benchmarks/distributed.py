"""Training across processes (paper 002), measured on this 2-core CPU.

    python benchmarks/distributed.py           # ~30 min on 2 cores

NEU-CLS (6 steel-defect classes, 1,440 training / 360 test images), ImageNet MobileNetV2 with its last
3 blocks and a new head trained ("partial", 1.2 M trainable parameters) at 128 px, batch 32 per
process, AdamW from 3e-4 on a cosine schedule, --epochs epochs.
- Speed: one process with one thread, then DDP and the parameter server with 1 and 2 workers of
  one thread each (the server holds one more thread: on two cores it shares them with the workers).
  Time per epoch = the loop's wall time per epoch (training and validation), mean over epochs 2..n
  (the first includes warm-up).
- Accuracy: each run's best epoch (by validation loss) on the 360 test images.
- Online sessions (paper 002 section 3.4, scenario 1): the training images split into --sessions
  stratified parts that arrive one after another; each session trains --epochs epochs on its part
  only, continuing from the previous session's model with max-norm 3 and dropout 0.2; accuracy after
  each session against batch training on all images (the "single" run above).
Writes benchmarks/results/distributed.{json,md}.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.data import FolderDataset  # noqa: E402
from edgelearn.data.images import load_image  # noqa: E402
from edgelearn.inspection import load_model  # noqa: E402
from edgelearn.training import TrainConfig, train  # noqa: E402


def test_accuracy(model_path: Path, data: Path) -> float:
    """Top-1 on the test split with the model's own validation preprocessing (resize, centre crop)."""
    loaded = load_model(model_path)
    transform = loaded.preprocessing.transform()
    test = FolderDataset.scan(data, "test")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test.paths), 64):
            x = torch.stack([transform(load_image(p)) for p in test.paths[i:i + 64]])
            predicted = loaded.model(x).argmax(1).tolist()
            correct += sum(loaded.classes[k] == label for k, label in zip(predicted, test.labels[i:i + 64],
                                                                          strict=True))
    return correct / len(test.paths)


def session_folders(data: Path, work: Path, sessions: int, seed: int) -> list[Path]:
    """Split the training images per class into ``sessions`` parts, each a folder of symbolic links."""
    ds = FolderDataset.scan(data, "train")
    rng = np.random.default_rng(seed)
    roots = [work / f"session{k + 1}" for k in range(sessions)]
    for c in ds.classes:
        paths = [p for p, label in zip(ds.paths, ds.labels, strict=True) if label == c]
        for k, part in enumerate(np.array_split(rng.permutation(len(paths)), sessions)):
            folder = roots[k] / "train" / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                link = folder / Path(paths[i]).name
                if not link.exists():
                    link.symlink_to(Path(paths[i]).resolve())
    return roots


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", default="neu_cls")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgelearn-distributed"))
    args = parser.parse_args()
    data = args.data / args.dataset
    args.work.mkdir(parents=True, exist_ok=True)
    settings = {"weights": args.weights, "strategy": "partial", "epochs": args.epochs, "input_size": args.input_size,
                "batch_size": 32, "seed": 0}
    log = lambda line: print("  " + line, flush=True)  # noqa: E731
    runs = [("single", 1), ("ddp", 1), ("ddp", 2), ("ps", 1), ("ps", 2)]
    results = []
    for mode, workers in runs:
        name = f"{mode}-{workers}"
        print(f"{name}: training", flush=True)
        output = args.work / f"{name}.pt"
        output.with_suffix(".ckpt").unlink(missing_ok=True)
        started = time.perf_counter()
        result = train(TrainConfig(data, output, mode=mode, workers=workers, threads=1, **settings), log=log)
        total = time.perf_counter() - started
        epoch_seconds = [h["seconds"] for h in result["history"]]
        results.append({"run": name, "mode": mode, "workers": workers, "epoch_seconds": epoch_seconds,
                        "seconds_per_epoch": float(np.mean(epoch_seconds[1:] or epoch_seconds)),
                        "total_seconds": total, "best_epoch": result["best_epoch"],
                        "test_accuracy": test_accuracy(output, data)})
        print(f"  {name}: {results[-1]['seconds_per_epoch']:.1f} s/epoch, "
              f"test {results[-1]['test_accuracy']:.2%}", flush=True)
    base = results[0]
    for r in results:
        r["speedup"] = base["seconds_per_epoch"] / r["seconds_per_epoch"]
        r["accuracy_vs_single"] = r["test_accuracy"] - base["test_accuracy"]

    sessions = []
    previous = None
    for k, folder in enumerate(session_folders(data, args.work / "sessions", args.sessions, seed=0)):
        output = args.work / f"session{k + 1}.pt"
        output.with_suffix(".ckpt").unlink(missing_ok=True)
        print(f"online session {k + 1}: training on {folder}", flush=True)
        train(TrainConfig(folder, output, start_from=previous, max_norm=3.0, dropout=0.2, threads=2, **settings),
              log=log)
        sessions.append({"session": k + 1, "images": sum(1 for _ in (folder / "train").rglob("*.*")),
                         "test_accuracy": test_accuracy(output, data)})
        print(f"  after session {k + 1}: test {sessions[-1]['test_accuracy']:.2%}", flush=True)
        previous = output

    config = {k: v for k, v in vars(args).items() if k not in ("data", "work")} | {
        "strategy": "partial", "batch_size": 32, "threads_per_process": 1, "data": str(data)}
    summary = {r["run"]: {"seconds_per_epoch": r["seconds_per_epoch"], "speedup": r["speedup"],
                          "test_accuracy": r["test_accuracy"]} for r in results}
    summary["online_sessions"] = [s["test_accuracy"] for s in sessions]
    lines = ["# Training across processes (NEU-CLS, MobileNetV2 partial, "
             f"{args.input_size} px, {args.epochs} epochs)", "",
             "| run | s/epoch | speed-up vs single | test accuracy | vs single |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['seconds_per_epoch']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['test_accuracy']:.2%} | {100 * r['accuracy_vs_single']:+.1f} |")
    lines += ["", f"Online sessions ({args.sessions} parts, {args.epochs} epochs each, max-norm 3, dropout 0.2) vs "
              f"batch training on all images ({base['test_accuracy']:.2%}):", "",
              "| after session | images in it | test accuracy |", "|---|---|---|"]
    lines += [f"| {s['session']} | {s['images']} | {s['test_accuracy']:.2%} |" for s in sessions]
    path = common.write_results("distributed", summary, config, {"runs": results, "sessions": sessions},
                                "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
