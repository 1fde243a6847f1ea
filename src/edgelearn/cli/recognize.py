"""Recognition: learn, predict, consolidate, info, demo."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgelearn.cli.features import embed_readable, say_unreadable
from edgelearn.cli.options import (
    Backbone,
    Consolidation,
    Fold,
    InputSize,
    Json,
    Key,
    Learner,
    LearnerOption,
    Model,
    NoCache,
    PrecisionOption,
    Runtime,
    RuntimeOption,
    SkipBad,
    Weights,
    default_weights,
    site_key,
)
from edgelearn.cli.output import emit, err, log, out, steps_table
from edgelearn.data import FolderDataset
from edgelearn.errors import ParameterError
from edgelearn.evaluation import evaluate_features, learn_stream
from edgelearn.recognizer import Recognizer

DEMO_DATA = Path("../shared/data/imagenette")
Dataset = Annotated[Path, typer.Argument(help="Folder: <class>/<sub...>/*.jpg, or with train/ and test/.")]


def learn(
    dataset: Dataset,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the model.")] = Path("model.edge"),
    learner: LearnerOption = Learner.slda,
    steps: Annotated[int, typer.Option(min=1, help="Class-incremental steps.")] = 1,
    per_class: Annotated[int | None, typer.Option(min=1, help="Train images per class (seeded draw).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of class order, shuffling and sub-sampling.")] = 0,
    consolidation: Annotated[Consolidation, typer.Option(help="When Fuzzy ARTMAP folds its memory.")]
    = Consolidation.none,
    backbone: Backbone = "mobilenet_v2",
    weights: Weights = None,
    input_size: InputSize = None,
    runtime: RuntimeOption = Runtime.TORCH,
    precision: PrecisionOption = None,
    no_cache: NoCache = False,
    skip_bad: SkipBad = False,
    key: Key = None,
    as_json: Json = False,
):
    """Learn the classes of a folder data set as a class-incremental stream and save the model."""
    result = _learn(dataset, learner, steps, per_class, seed, consolidation, backbone, weights, input_size,
                    no_cache, runtime, skip_bad, precision and precision.value)
    result.pop("recognizer").save(output, key=site_key(key))
    err.print(f"saved {output}")
    emit({**result, "model": str(output)}, as_json, steps_table(result["history"], result.get("evaluation")))
    say_unreadable(result.get("unreadable"))


def predict(
    model: Model,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 5,
    level: Annotated[int | None, typer.Option(min=1, help="Roll labels up to this concept level.")] = None,
    weights: Weights = None,
    runtime: RuntimeOption = Runtime.TORCH,
    precision: PrecisionOption = None,
    as_json: Json = False,
):
    """Classify images: label, confidence and the next-best classes."""
    rec = Recognizer.load(model, weights=weights, runtime=runtime, precision=precision and precision.value)
    predictions = rec.predict(images, top_k=top_k, level=level)
    rows = [{"image": str(p), **pred.to_dict()} for p, pred in zip(images, predictions, strict=True)]
    table = Table("image", "label", "confidence", "next best")
    for r in rows:
        nxt = ", ".join(f"{a['label']} {a['confidence']:.0%}" for a in r["alternatives"][1 if r["unknown"] else 0:])
        label = r["label"] or f"unknown — closest: {r['alternatives'][0]['label']} {r['confidence']:.0%}"
        table.add_row(r["image"], label, f"{r['confidence']:.1%}", nxt)
    emit({"predictions": rows}, as_json, table)


def consolidate(
    model: Model,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Default: overwrite MODEL.")] = None,
    strategy: Annotated[Fold, typer.Option(help="Fuzzy ARTMAP: fold a class's representations by union or "
                                                "mean.")] = Fold.union,
    max_per_class: Annotated[int, typer.Option(min=1, help="Representations kept per class.")] = 1,
    key: Key = None,
    as_json: Json = False,
):
    """Shrink a model's fast memory (Fuzzy ARTMAP: fold representations per class)."""
    rec = Recognizer.load(model, with_backbone=False)
    before = rec.learner.nbytes
    kwargs = {"strategy": strategy, "max_per_class": max_per_class} if rec.learner.kind == "fuzzy_artmap" else {}
    rec.consolidate(**kwargs).save(output or model, key=site_key(key))
    result = {"bytes_before": before, "bytes_after": rec.learner.nbytes, "model": str(output or model)}
    if not as_json:
        out.print(f"{result['model']}: learner memory {before:,} -> {rec.learner.nbytes:,} bytes")
    emit(result, as_json)


def info(model: Model, as_json: Json = False):
    """What a model knows: learner, classes, memory, backbone fingerprint."""
    result = Recognizer.load(model, with_backbone=False).info()
    table = Table("field", "value")
    for key in ("learner", "n_classes", "representations", "learner_bytes", "examples_seen"):
        table.add_row(key, str(result[key]))
    c, threshold = result["calibration"], result["familiarity_threshold"]
    table.add_row("certainty", f"calibrated ({c['n']} examples)" if c["calibrated"] else f"not calibrated yet "
                  f"({c['n']}/{c['needed']})")
    table.add_row("unknown below familiarity", "- (too few examples)" if threshold is None else f"{threshold:.4g}")
    table.add_row("backbone", json.dumps(result["backbone"]))
    table.add_row("classes", ", ".join(result["classes"]))
    emit(result, as_json, table)


def demo(
    dataset: Annotated[Path, typer.Argument(help="Folder data set with train/ and test/.")] = DEMO_DATA,
    learner: LearnerOption = Learner.slda,
    steps: Annotated[int, typer.Option(min=1, help="Class-incremental steps.")] = 10,
    weights: Weights = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the model.")] = Path("demo.edge"),
    as_json: Json = False,
):
    """The main job on an embedded default: learn imagenette class by class, evaluate, save."""
    if not dataset.is_dir():
        raise ParameterError(f"demo data set not found at {dataset}; give a folder data set as argument")
    result = _learn(dataset, learner, steps, 100, 0, Consolidation.none, "mobilenet_v2", default_weights(weights),
                    None, False)
    result.pop("recognizer").save(output)
    err.print(f"saved {output}")
    emit({**result, "model": str(output)}, as_json, steps_table(result["history"], result.get("evaluation")))


def _learn(dataset: Path, learner: str, steps: int, per_class: int | None, seed: int, consolidation: str,
           backbone: str, weights: str | None, input_size: int | None, no_cache: bool,
           runtime: str = "torch", skip_bad: bool = False, precision: str | None = None) -> dict:
    train, test = FolderDataset.splits(dataset)
    train = train.sample_per_class(per_class, seed)
    if steps > len(train.classes):
        log(f"warning: --steps {steps} is more than the {len(train.classes)} classes: classes are cut across steps")
    rec = Recognizer.create(backbone, learner=learner, weights=weights, input_size=input_size, runtime=runtime,
                            precision=precision)
    err.print(f"learning {len(train)} images of {len(train.classes)} classes in {steps} step(s) "
              f"with {rec.learner.kind} on {rec.backbone!r}")
    unreadable = [] if skip_bad else None
    train, X = embed_readable(rec, train, no_cache, unreadable)
    test_data = None
    if test is not None:
        test, test_X = embed_readable(rec, test, no_cache, unreadable)
        test_data = (test_X, test.labels)
    history = learn_stream(rec, X, train.labels, n_steps=steps, seed=seed, consolidation=consolidation,
                           test=test_data)
    if len(rec.classes) == 1 and rec.evidence.threshold is None:
        err.print(f"warning: only one class learned: every image will be called {rec.classes[0]!r} until there "
                  "are enough examples to tell unfamiliar images apart (or teach a second class)", highlight=False)
    result = {"history": history, "info": rec.info(), **({"unreadable": unreadable} if skip_bad else {})}
    if test_data is not None:
        result["evaluation"] = evaluate_features(rec, *test_data)
    return {"recognizer": rec, **result}
