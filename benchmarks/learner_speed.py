"""Module B's speed on a device (issue 19 §4), learner only, one thread, honest by construction.

    python benchmarks/learner_speed.py            # about a minute on 2 cores

- Fuzzy ARTMAP predictions one at a time at 1,000 classes: the uint8 form (now) beside the float32
  minima it replaced (before), interleaved in the same run; and how often the two predict the same
  class on held-out real features (imagenette and NEU at 96 px, when their features are cached).
- Per-frame predict-then-learn at 10 classes, as a camera would (predict one frame, learn it, next
  frame), beside predict-only, for every learner (SLDA's full covariance solves included, amortised:
  they happen inside the timed frames once the scatter has grown by ``StreamingLDA.refresh_after``).
Every figure: numpy, BLAS and OpenCV on 1 thread, all variants of all tables interleaved repeat by
repeat in one loop, the median of ``--repeats`` (>= 5) after a warm-up repeat.
Writes benchmarks/results/learner_speed.{json,md}.
"""

import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.learners import FuzzyArtmap, make_learner  # noqa: E402
from edgelearn.learners.fuzzy_artmap import fuzzy_and_sums  # noqa: E402

DIM = 1280  # MobileNetV2's pooled features
LEARNERS = ("slda", "ncm", "fuzzy_artmap")
FRAMES = 500  # per learner and repeat in the per-frame runs
TARGETS = {"per frame": 1000, "fuzzy_artmap 1,000 classes": 5000}  # issue 19 §4, per second


class Float32Artmap(FuzzyArtmap):
    """Fuzzy ARTMAP predicting as before the uint8 form (the code as it was): float32 minima of every
    representation, the class runs sorted on each call."""

    def _choices(self, X):
        return fuzzy_and_sums(self.weights_, self._code(X)) / (self._alpha + self.weights_.sum(axis=1))

    def _scores(self, X):
        order = np.argsort(self.category_class_, kind="stable")
        classes = self.category_class_[order]
        starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
        scores = np.zeros((len(X), len(self.classes_)))
        scores[:, classes[starts]] = np.maximum.reduceat(self._choices(X)[:, order], starts, axis=1)
        return scores


def features(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ReLU-like features: a profile all classes share plus one of their own, times per-image noise."""
    rng = np.random.default_rng(seed)
    profiles = np.random.default_rng(0)
    centres = profiles.gamma(0.5, 1.0, DIM) + 0.5 * profiles.gamma(0.5, 1.0, (classes, DIM))
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] * rng.gamma(2.0, 0.5, (len(y), DIM)), y


def median_rate(runs: dict, repeats: int) -> dict:
    """Per name: items/s, the median over ``repeats`` interleaved rounds after one warm-up round."""
    rates = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, (run, items) in runs.items():
            start = time.perf_counter()
            run()
            if round_:  # round 0 warms caches up
                rates[name].append(items / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def artmap_at_1000_classes(consolidated: bool) -> tuple[dict, dict]:
    """The runs to time (name -> (run, items)) and what they are, for one Fuzzy ARTMAP at 1,000 classes."""
    X, y = features(1000, 2, seed=1)
    now = FuzzyArtmap().partial_fit(X, y)
    if consolidated:
        now.consolidate()  # one representation per class
    before = Float32Artmap()
    before.load_state_dict(now.state_dict())
    queries = features(1000, 1, seed=2)[0][:200]

    def one_at_a_time(model):
        return lambda: [model.predict(row[None]) for row in queries]

    tag = f"{now.n_representations} representations"
    runs = {f"{tag} uint8 (now)": (one_at_a_time(now), len(queries)),
            f"{tag} float32 (before)": (one_at_a_time(before), len(queries))}
    same = float((now.predict(queries) == before.predict(queries)).mean())
    return runs, {"representations": now.n_representations, "tag": tag, "same_prediction": same}


def artmap_agreement_on_real_features() -> dict:
    """Share of held-out images predicted the same by the uint8 and float32 forms, per data set."""
    out = {}
    for name in ("imagenette", "neu_cls"):
        try:
            data = common.dataset_features(name, 96, common.default_weights())
        except (FileNotFoundError, OSError) as error:
            out[name] = f"skipped: {error}"
            continue
        (X, y, _), (Xt, _, _) = data["train"], data["test"]
        now = FuzzyArtmap().partial_fit(X, y)
        before = Float32Artmap()
        before.load_state_dict(now.state_dict())
        out[name] = {"test_images": len(Xt), "same_prediction": float((now.predict(Xt) == before.predict(Xt)).mean())}
    return out


def slda_stream_on_real_features(checkpoint: int = 100) -> dict:
    """SLDA taught 2 images per class, then the rest of imagenette's train split one frame at a time (predict,
    learn); every ``checkpoint`` frames the test split is scored by the streamed learner (its covariance from
    the last full solve) and by an exact copy (solved now). Not timed."""
    try:
        data = common.dataset_features("imagenette", 96, common.default_weights())
    except (FileNotFoundError, OSError) as error:
        return {"skipped": str(error)}
    (X, y, _), (Xt, yt, _) = data["train"], data["test"]
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    first = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(X)), first)
    slda = make_learner("slda").partial_fit(X[first], y[first])
    solves, right, checks = count_full_solves(slda), 0, []
    for k, i in enumerate(rest, 1):
        right += slda.predict(X[i:i + 1])[0] == y[i]
        slda.partial_fit(X[i:i + 1], [y[i]])
        if k % checkpoint == 0:
            exact = copy.deepcopy(slda)
            exact.__dict__.pop("_solve")  # solving the copy does not count
            exact = exact.snapshot()
            checks.append({"examples": int(slda.counts_.sum()), "accuracy": float((slda.predict(Xt) == yt).mean()),
                           "exact_accuracy": float((exact.predict(Xt) == yt).mean()),
                           "same_prediction": float((slda.predict(Xt) == exact.predict(Xt)).mean())})
    return {"refresh_after": slda.refresh_after, "frames": len(rest), "full_solves": len(solves),
            "prequential_accuracy": right / len(rest), "test_images": len(Xt), "checkpoints": checks}


def per_frame(frames: int) -> tuple[dict, dict]:
    """Predict one frame, learn it, next frame, at 10 classes (5 taught per class first); beside predict-only.
    Every repeat streams ``frames`` more frames into the same learners, so they grow by ``frames`` a repeat."""
    X, y = features(10, 5, seed=3)
    stream, labels = features(10, frames // 10, seed=4)  # frames // 10 per class
    order = np.random.default_rng(5).permutation(len(stream))
    stream, labels = stream[order], labels[order]
    runs, learners = {}, {}
    for kind in LEARNERS:
        learner = learners[kind] = make_learner(kind).partial_fit(X, y)

        def camera(learner=learner):
            for row, label in zip(stream, labels, strict=True):
                learner.predict(row[None])
                learner.partial_fit(row[None], [label])

        def predict_only(learner=learner):
            for row in stream:
                learner.predict(row[None])

        runs[f"{kind} predict-then-learn"] = (camera, len(stream))
        runs[f"{kind} predict only"] = (predict_only, len(stream))
    return runs, learners


def count_full_solves(slda) -> list:
    """A list that grows by one each time ``slda`` solves its covariance in full."""
    solves, solve = [], slda._solve

    def counted():
        solves.append(1)
        solve()

    slda._solve = counted
    return solves


def markdown(results: dict) -> str:
    lines = ["# Module B on a device: learner speed, 1 thread", "",
             f"Medians of {results['repeats']} interleaved repeats after a warm-up; learner only (features given). "
             f"Load average during the run: {results['load']:.1f} on {os.cpu_count()} cores (other work slows "
             "every figure alike; compare within a table).", "",
             "## Fuzzy ARTMAP, one prediction at a time, 1,000 classes", "",
             f"Target: >= {TARGETS['fuzzy_artmap 1,000 classes']:,} predictions/s (uint8).", "",
             "| representations | uint8 (now) predictions/s | float32 (before) | same prediction (200 queries) |",
             "|---:|---:|---:|---:|"]
    for fam in results["fuzzy_artmap_1000_classes"]:
        rate = fam["predictions_per_s"]
        lines.append(f"| {fam['representations']} | {rate['uint8 (now)']:,.0f} | {rate['float32 (before)']:,.0f} "
                     f"| {fam['same_prediction']:.1%} |")
    lines += ["", "Same prediction on held-out real features (96 px), uint8 vs float32:"]
    for name, value in results["fuzzy_artmap_real_agreement"].items():
        text = value if isinstance(value, str) else f"{value['same_prediction']:.2%} of {value['test_images']}"
        lines.append(f"- {name}: {text}")
    lines += ["", "## Per frame at 10 classes (predict one frame, learn it, next frame)", "",
              f"Target: >= {TARGETS['per frame']:,} predict-then-learn frames/s. {FRAMES} frames per learner and "
              f"repeat, so each learner grew from 50 examples to {results['examples_at_end']:,} during the run; "
              f"SLDA solved its covariance in full {results['slda_full_solves']} times inside the timed frames.", "",
              "| learner | predict-then-learn frames/s | predict-only frames/s |", "|---|---:|---:|"]
    rates = results["per_frame_10_classes"]
    lines += [f"| {kind} | {rates[f'{kind} predict-then-learn']:,.0f} | {rates[f'{kind} predict only']:,.0f} |"
              for kind in LEARNERS]
    lines += slda_stream_markdown(results["slda_stream_imagenette_96"])
    return "\n".join(lines) + "\n"


def slda_stream_markdown(stream: dict) -> list[str]:
    lines = ["", "## SLDA between full solves, real features (imagenette, 96 px)", ""]
    if "skipped" in stream:
        return lines + [f"Skipped: {stream['skipped']}"]
    checks = stream["checkpoints"]
    gaps = [c["accuracy"] - c["exact_accuracy"] for c in checks]
    return lines + [
        f"2 images per class taught, then {stream['frames']:,} frames one at a time (predict, learn); "
        f"{stream['full_solves']} full solves (re-solve once the scatter's trace grew by "
        f"{stream['refresh_after']:.0%}); prequential accuracy {stream['prequential_accuracy']:.1%}.", "",
        f"On the {stream['test_images']} test images at {len(checks)} checkpoints: accuracy as streamed minus exact "
        f"{min(gaps):+.1%} to {max(gaps):+.1%} (mean {np.mean(gaps):+.2%}); same prediction as the exact model "
        f"{min(c['same_prediction'] for c in checks):.1%} at worst; at the end {checks[-1]['accuracy']:.1%} "
        f"as streamed, {checks[-1]['exact_accuracy']:.1%} exact."]


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-real", action="store_true", help="skip the agreement on real features")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer are not worth reporting)")
    import cv2

    cv2.setNumThreads(1)  # the uint8 kernel is OpenCV's: one thread, like numpy's BLAS
    with threadpool_limits(1):
        artmaps = [artmap_at_1000_classes(consolidated) for consolidated in (False, True)]
        camera_runs, learners = per_frame(FRAMES)
        solves = count_full_solves(learners["slda"])
        rates = median_rate({**camera_runs, **{k: v for runs, _ in artmaps for k, v in runs.items()}}, args.repeats)
        results = {"repeats": args.repeats,
                   "fuzzy_artmap_1000_classes": [
                       {**about, "predictions_per_s": {variant: rates[f"{about['tag']} {variant}"]
                                                       for variant in ("uint8 (now)", "float32 (before)")}}
                       for _, about in artmaps],
                   "per_frame_10_classes": {name: rates[name] for name in camera_runs},
                   "examples_at_end": int(learners["slda"].counts_.sum()), "slda_full_solves": len(solves),
                   "slda_stream_imagenette_96": {"skipped": "--no-real"} if args.no_real
                   else slda_stream_on_real_features(),
                   "fuzzy_artmap_real_agreement": {} if args.no_real else artmap_agreement_on_real_features()}
    results["load"] = os.getloadavg()[0]
    text = markdown(results)
    common.write_results("learner_speed", {"learners": list(LEARNERS)}, vars(args) | {"data": str(args.data)},
                         results, text)
    print(text)


if __name__ == "__main__":
    main()
