"""Few-shot learning of a new class (issue 18, section 2).

Every class but one is taught with 100 examples; the held-out class with k in {1, 3, 5, 10}.
Reported: recall on that class's test images, accuracy on the old classes' test images after it,
averaged over every class as the new one and over the seeds; closed-set accuracy with all the data;
and, for SLDA's familiarity, known (5 imagenette classes) vs unknown (the other 5 and NEU) at each size.

    python -m benchmarks.fewshot --seeds 2
"""

import time

import numpy as np

from benchmarks.common import argument_parser, dataset_features, write_results
from edgelearn.learners import make_learner

LEARNERS = {"ncm": ("ncm", {}), "slda": ("slda", {}), "slda (old scoring)": ("slda", {"norm_prior": 0.0}),
            "fuzzy_artmap": ("fuzzy_artmap", {})}
SHOTS = (1, 3, 5, 10)
DATASETS, SIZES = ("imagenette", "neu_cls"), (96, 224)


def new_class_run(kind, params, X, y, Xt, yt, new, k, seed) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k if c == new else 100] for c in sorted(set(y))]
    idx = rng.permutation(np.concatenate(chosen))
    pred = make_learner(kind, **params).partial_fit(X[idx], y[idx]).predict(Xt)
    is_new = yt == new
    return float((pred[is_new] == new).mean()), float((pred[~is_new] == yt[~is_new]).mean())


def few_shot(features, seeds) -> list[dict]:
    rows = []
    for (name, size), f in features.items():
        (X, y, _), (Xt, yt, _) = f["train"], f["test"]
        full = {label: float((make_learner(kind, **params).partial_fit(X, y).predict(Xt) == yt).mean())
                for label, (kind, params) in LEARNERS.items()}
        for label, (kind, params) in LEARNERS.items():
            for k in SHOTS:
                runs = [new_class_run(kind, params, X, y, Xt, yt, new, k, seed)
                        for new in sorted(set(y)) for seed in range(seeds)]
                recall, old = np.mean(runs, axis=0)
                rows.append({"dataset": name, "size": size, "learner": label, "k": k, "recall": float(recall),
                             "old_accuracy": float(old), "full_accuracy": full[label], "runs": len(runs)})
            print(name, size, label, [f"{r['recall']:.3f}" for r in rows[-len(SHOTS):]], flush=True)
    return rows


def auroc(known, unknown) -> float:
    return float((known[:, None] > unknown[None]).mean() + 0.5 * (known[:, None] == unknown[None]).mean())


def familiarity(features) -> list[dict]:
    rows = []
    for size in SIZES:
        (X, y, _), (Xt, yt, _) = features["imagenette", size]["train"], features["imagenette", size]["test"]
        known = sorted(set(y))[:5]
        rng = np.random.default_rng(0)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 100, replace=False) for c in known])
        slda = make_learner("slda").partial_fit(X[idx], y[idx])
        score_known = slda._familiarity(Xt[np.isin(yt, known)])
        score_unknown = slda._familiarity(np.vstack([Xt[~np.isin(yt, known)], features["neu_cls", size]["test"][0]]))
        fpr95 = float((score_unknown >= np.percentile(score_known, 5)).mean())
        rows.append({"size": size, "auroc": auroc(score_known, score_unknown), "fpr95": fpr95})
    return rows


def markdown(rows, fam, seeds, seconds) -> str:
    out = ["# Few-shot: a new class taught with k examples\n",
           f"Every class but one with 100 examples, the held-out class with k; averaged over every class as the new "
           f"one x {seeds} seeds. Frozen MobileNetV2 features. {seconds:.0f} s.\n"]
    for name in DATASETS:
        for size in SIZES:
            out += [f"\n## {name}, {size} px\n",
                    "| learner | recall k=1 | k=3 | k=5 | k=10 | old classes' accuracy (k=1 / k=10) | all data |",
                    "|---|---|---|---|---|---|---|"]
            for label in LEARNERS:
                r = {row["k"]: row for row in rows
                     if (row["dataset"], row["size"], row["learner"]) == (name, size, label)}
                recall = " | ".join(f"{100 * r[k]['recall']:.1f} %" for k in SHOTS)
                old = f"{100 * r[1]['old_accuracy']:.1f} / {100 * r[10]['old_accuracy']:.1f} %"
                out.append(f"| {label} | {recall} | {old} | {100 * r[1]['full_accuracy']:.1f} % |")
    out += ["\n## SLDA familiarity: 5 imagenette classes known, the other 5 and NEU unknown\n",
            "| size | AUROC | unknowns let through at 95 % recall of knowns |", "|---|---|---|"]
    out += [f"| {f['size']} px | {f['auroc']:.3f} | {100 * f['fpr95']:.1f} % |" for f in fam]
    return "\n".join(out) + "\n"


def main():
    parser = argument_parser(__doc__)
    parser.set_defaults(seeds=2)
    args = parser.parse_args()
    start = time.time()
    features = {}
    for name in DATASETS:
        for size in SIZES:
            f = dataset_features(name, size, args.weights, args.data)
            features[name, size] = {split: (f[split][0], np.array(f[split][1], dtype=str), None)
                                    for split in ("train", "test")}
    rows, fam = few_shot(features, args.seeds), familiarity(features)
    seconds = time.time() - start
    summary = {"familiarity": fam}
    write_results("fewshot", summary, {"seeds": args.seeds, "shots": SHOTS, "per_old_class": 100}, rows,
                  markdown(rows, fam, args.seeds, seconds))
    print(markdown(rows, fam, args.seeds, seconds))


if __name__ == "__main__":
    main()
