"""Evaluation: accuracy (and open-set figures) on a labelled folder, calibration, runtime variants."""

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from edgelearn.cli.features import embed_readable, say_unreadable
from edgelearn.cli.options import (
    Json,
    Model,
    NoCache,
    PrecisionOption,
    Runtime,
    RuntimeOption,
    SkipBad,
    Weights,
    default_weights,
    refuse_together,
)
from edgelearn.cli.output import emit, log, open_set_line, out
from edgelearn.data import FolderDataset
from edgelearn.errors import DatasetError, ParameterError
from edgelearn.evaluation import evaluate_features
from edgelearn.evaluation.openset import evaluate_open_set, learned_mask, not_learned
from edgelearn.recognizer import Recognizer


def evaluate(
    ctx: typer.Context,
    model: Model,
    dataset: Annotated[Path, typer.Argument(help="Folder data set (its test/ split when there is one).")],
    level: Annotated[int | None, typer.Option(min=1, help="Evaluate at this concept level.")] = None,
    unknown: Annotated[Path | None, typer.Option(help="Folder of images of classes the model never learned: "
                                                      "also report how well it tells them apart (open set).")] = None,
    variants: Annotated[bool, typer.Option(
        "--variants", help="Instead: one table over every runtime and precision of the model's backbone (its "
                           "learner relearned on train/); takes no --level, --unknown, --runtime, --no-cache.")]
    = False,
    weights: Weights = None,
    runtime: RuntimeOption = Runtime.TORCH,
    precision: PrecisionOption = None,
    no_cache: NoCache = False,
    skip_bad: SkipBad = False,
    as_json: Json = False,
):
    """Top-1, top-5 and per-class accuracy on a labelled folder."""
    if variants:
        refuse_together(ctx, "--variants", "level", "runtime", "no_cache", "unknown", "precision")
        return _variants_table(model, dataset, weights, as_json)
    unreadable = [] if skip_bad else None
    rec, ds, X = _model_and_test_split(model, dataset, weights, no_cache, runtime, unreadable,
                                       precision and precision.value)
    learned = learned_mask(rec, ds.labels, level)
    if not learned.any():
        raise DatasetError(f"the model learned none of the classes in {dataset}")
    labels = [y for y, k in zip(ds.labels, learned, strict=True) if k]
    result = evaluate_features(rec, X[learned], labels, level=level)
    if skip_bad:
        result["unreadable"] = unreadable
    table = Table("class", "n", "top-1", "top-5")
    for c, r in result["per_class"].items():
        table.add_row(c, str(r["n"]), f"{r['accuracy']:.1%}", f"{r['top5']:.1%}")
    table.caption = f"all: top-1 {result['accuracy']:.2%}, top-5 {result['top5']:.2%}, n={result['n']}"
    if not learned.all():
        result["not_learned"] = missing = not_learned(ds.labels, learned)
        log(f"warning: the model never learned the test classes {', '.join(missing['classes'])}: their "
            f"{missing['n']} images are left out of the accuracy and count as unknown images")
    others = [X[~learned]] + ([_embed(rec, FolderDataset.test_split(unknown), no_cache)] if unknown else [])
    if unknown or not learned.all():
        result["open_set"] = evaluate_open_set(rec, X[learned], labels, np.concatenate(others), level=level)
        table.caption += "\n" + open_set_line(result["open_set"])
    emit(result, as_json, table)
    say_unreadable(unreadable)


def calibrate(
    model: Model,
    dataset: Annotated[Path, typer.Argument(help="Labelled images NOT used for learning (its test/ split if any).")],
    weights: Weights = None,
    no_cache: NoCache = False,
    as_json: Json = False,
):
    """Fit the confidence temperature on held-out images, so that 80 % confidence means 80 % right."""
    rec, ds, X = _model_and_test_split(model, dataset, weights, no_cache)
    before = evaluate_features(rec, X, ds.labels)["ece"]
    temperature = rec.calibrate(X, ds.labels)
    after = evaluate_features(rec, X, ds.labels)["ece"]
    result = {"temperature": temperature, "ece_before": before, "ece_after": after, "n": len(ds), "model": str(model)}
    rec.save(model)
    if not as_json:
        out.print(f"{model}: temperature {temperature:.3g}; expected calibration error "
                  f"{before:.1%} -> {after:.1%} on {len(ds)} images")
    emit(result, as_json)


def _model_and_test_split(model: Path, dataset: Path, weights, no_cache: bool, runtime: str = "torch",
                          unreadable: list[str] | None = None, precision: str | None = None):
    """A saved model, the data set's test split (or all of it, less ``unreadable`` images) and its features."""
    rec = Recognizer.load(model, weights=weights, runtime=runtime, precision=precision)
    return rec, *embed_readable(rec, FolderDataset.test_split(dataset), no_cache, unreadable)


def _embed(rec: Recognizer, ds: FolderDataset, no_cache: bool):
    return embed_readable(rec, ds, no_cache)[1]


def _variants_table(model: Path, dataset: Path, weights, as_json: bool) -> None:
    """Module A at every runtime and precision: top-1/top-5 of the model's learner kind on each variant's
    features, size, p50 latency at batch 1, throughput at batch 32 (as Rieder et al.'s figures 4-8)."""
    from edgelearn.backbones.weights import resolve_weights
    from edgelearn.evaluation.variants import VARIANTS, compare_variants

    rec = Recognizer.load(model, with_backbone=False)
    fp = rec.info()["backbone"]
    weights = default_weights(weights)
    if resolve_weights(fp["name"], weights).ident != fp["weights"]:
        raise ParameterError(f"{model} was learned on other backbone weights ({fp['weights'][:16]}…); "
                             f"give them with --weights")
    rows = compare_variants(dataset, weights=weights, input_size=fp.get("input_size"), backbone=fp["name"],
                            learner=rec.info()["learner"], variants=VARIANTS, progress=log)
    table = Table("runtime", "precision", "top-1", "top-5", "MiB", "p50 ms (batch 1)", "img/s (batch 32)")
    for r in rows:
        table.add_row(r["runtime"], r["precision"], f"{r['accuracy']:.2%}", f"{r['top5']:.2%}",
                      f"{r['bytes'] / 2**20:.2f}", f"{r['p50_ms']:.1f}", f"{r['batch32_per_s']:.0f}")
    emit({"variants": [{k: v for k, v in r.items() if k != "path"} for r in rows]}, as_json, table)
