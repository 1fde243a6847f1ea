"""Open-set benchmark: does each learner tell images of the classes it learned from images of others?

    python benchmarks/openset.py               # 3 seeds, both sizes (a few minutes on 2 cores, features cached)
    python benchmarks/openset.py --seeds 1     # quicker look

Protocol: two scenarios on the shared data, each at 224 and 96 px:
  * imagenette: 5 imagenette classes drawn with the seed are learned (100 training images each, one taught
    batch); unknown = the test images of the other 5 classes and every NEU test image;
  * neu_cls: 3 NEU classes drawn with the seed are learned; unknown = the test images of the other 3.
The learner's familiarity (higher = more like what it learned) is compared with the max-probability baseline
(the calibrated top probability, today's rule): AUROC, FPR95 (unknowns let through at the threshold that keeps
95 % of the known test images), closed-set accuracy, and, with the recognizer's own threshold (5th percentile
of held-out familiarity), accuracy with rejection and the share of known images rejected / unknown accepted.
Writes benchmarks/results/openset.{json,md} and openset_familiarity.png (histograms, 224 px, seed 0).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.evaluation.openset import evaluate_open_set
from edgelearn.learners import make_learner
from edgelearn.recognizer import Recognizer

SIZES = (224, 96)
LEARNERS = ("slda", "ncm", "fuzzy_artmap")
SCENARIOS = {"imagenette": 5, "neu_cls": 3}  # data set -> classes learned; the rest (and NEU for imagenette) unknown
TRAIN_PER_CLASS = 100
METRICS = ("auroc", "fpr95", "closed_set_accuracy", "accuracy_with_rejection", "known_rejected", "unknown_accepted")


def split(features: dict, scenario: str, seed: int):
    """Training rows of the known classes, known test rows and their labels, unknown test rows."""
    X, y, _ = features[scenario]["train"]
    Xt, yt, _ = features[scenario]["test"]
    classes = sorted(set(y))
    known = sorted(np.random.default_rng(seed).choice(classes, SCENARIOS[scenario], replace=False))
    train = common.per_class_indices(y, TRAIN_PER_CLASS, seed)
    train = train[np.isin(y[train], known)]
    seen = np.isin(yt, known)
    unknown = [Xt[~seen]] + ([features["neu_cls"]["test"][0]] if scenario == "imagenette" else [])
    return X[train], y[train], Xt[seen], yt[seen], np.concatenate(unknown), known


def run(features_by_size: dict, seeds: list[int]) -> tuple[list[dict], dict]:
    results, histograms = [], {}
    for size, features in features_by_size.items():
        for scenario in SCENARIOS:
            for seed in seeds:
                X, y, Xk, yk, Xu, known = split(features, scenario, seed)
                for kind in LEARNERS:
                    rec = Recognizer(None, make_learner(kind), fingerprint=features[scenario]["fingerprint"])
                    rec.learn_features(X, list(y))
                    r = evaluate_open_set(rec, Xk, list(yk), Xu)
                    results.append({"scenario": scenario, "size": size, "seed": seed, "learner": kind,
                                    "known_classes": list(known), **r})
                    if size == 224 and seed == seeds[0]:
                        histograms[(scenario, kind)] = (rec.familiarity(Xk), rec.familiarity(Xu), r["threshold"])
                    print(f"  {scenario} {size}px seed {seed} {kind}: AUROC {r['auroc']:.3f} FPR95 {r['fpr95']:.3f} "
                          f"(max-prob {r['max_probability']['auroc']:.3f} / {r['max_probability']['fpr95']:.3f})",
                          flush=True)
    return results, histograms


def mean(rows: list[dict], key: str, baseline: bool = False) -> float:
    return float(np.mean([(r["max_probability"] if baseline else r)[key] for r in rows]))


def rows_of(results, **where):
    return [r for r in results if all(r[k] == v for k, v in where.items())]


def summarise(results) -> dict:
    summary = {}
    for scenario in SCENARIOS:
        for size in SIZES:
            for kind in LEARNERS:
                rows = rows_of(results, scenario=scenario, size=size, learner=kind)
                for key in METRICS:
                    summary[f"{scenario}_{size}_{kind}_{key}"] = mean(rows, key)
                for key in ("auroc", "fpr95"):
                    summary[f"{scenario}_{size}_{kind}_maxprob_{key}"] = mean(rows, key, baseline=True)
    return summary


def markdown(results, seeds, command) -> str:
    lines = [f"# Open-set recognition: familiarity vs max-probability\n\n`{command}`; mean over seeds {seeds}; "
             f"{TRAIN_PER_CLASS} training images per known class, one taught batch.\n",
             "| known | px | learner | AUROC | FPR95 | max-prob AUROC | max-prob FPR95 | closed-set acc | "
             "acc with rejection | known rejected | unknown accepted |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for size in SIZES:
            for kind in LEARNERS:
                rows = rows_of(results, scenario=scenario, size=size, learner=kind)
                lines.append(f"| {SCENARIOS[scenario]} {scenario} | {size} | {kind} | {mean(rows, 'auroc'):.3f} | "
                             f"{mean(rows, 'fpr95'):.1%} | {mean(rows, 'auroc', True):.3f} | "
                             f"{mean(rows, 'fpr95', True):.1%} | {mean(rows, 'closed_set_accuracy'):.1%} | "
                             f"{mean(rows, 'accuracy_with_rejection'):.1%} | {mean(rows, 'known_rejected'):.1%} | "
                             f"{mean(rows, 'unknown_accepted'):.1%} |")
    lines.append("\nUnknown for imagenette: its other 5 classes and all of NEU; for NEU: its other 3 classes. "
                 "Histograms: openset_familiarity.png.\n")
    return "\n".join(lines)


def plot(histograms: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SCENARIOS), len(LEARNERS), figsize=(12, 6))
    for (i, scenario), (j, kind) in ((a, b) for a in enumerate(SCENARIOS) for b in enumerate(LEARNERS)):
        known, unknown, threshold = histograms[(scenario, kind)]
        ax = axes[i, j]
        bins = np.linspace(min(known.min(), unknown.min()), max(known.max(), unknown.max()), 40)
        ax.hist(known, bins, alpha=0.6, density=True, label="known classes")
        ax.hist(unknown, bins, alpha=0.6, density=True, label="unknown")
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
        ax.set_title(f"{kind}, {SCENARIOS[scenario]} {scenario} known, 224 px", fontsize=9)
        ax.set_xlabel("familiarity", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(common.RESULTS / "openset_familiarity.png", dpi=110)
    plt.close(fig)


def main():
    parser = common.argument_parser(__doc__)
    parser.set_defaults(seeds=3)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    command = f"python benchmarks/openset.py --seeds {args.seeds}"
    print(f"{command}\nenv: {common.environment()}", flush=True)
    features = {size: {ds: common.dataset_features(ds, size, args.weights, args.data) for ds in SCENARIOS}
                for size in SIZES}
    results, histograms = run(features, seeds)
    summary = summarise(results)
    config = {"scenarios": SCENARIOS, "input_sizes": SIZES, "train_per_class": TRAIN_PER_CLASS, "seeds": seeds,
              "weights": args.weights, "data": str(args.data), "command": command,
              "learners": {k: make_learner(k).get_params() for k in LEARNERS},
              "fingerprints": {f"{ds}_{s}": f[ds]["fingerprint"] for s, f in features.items() for ds in SCENARIOS}}
    common.write_results("openset", summary, config, results, markdown(results, seeds, command))
    plot(histograms)
    print(markdown(results, seeds, command))


if __name__ == "__main__":
    main()
