"""Training networks: train (transfer learning, distributed), distill a student, inspect by patches,
analyse what a network learned."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgelearn.cli.options import Backbone, Json, Mode, Strategy, Weights, default_weights, refuse_together
from edgelearn.cli.output import emit, err, history_table, log
from edgelearn.data import FolderDataset
from edgelearn.errors import ParameterError


def train(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="Folder data set: <class>/*.jpg (its train/ split if any).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The trained weights (+ .json, .ckpt, .png).")]
    = Path("trained.pt"),
    strategy: Annotated[Strategy, typer.Option(help="frozen (new head only), partial (last blocks too) or full.")]
    = Strategy.frozen,
    mode: Annotated[Mode, typer.Option(help="single (this process), ddp (synchronous data parallel) or ps "
                                            "(asynchronous parameter server).")] = Mode.single,
    workers: Annotated[int, typer.Option(min=1, help="ddp/ps: worker processes.")] = 2,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads per process (default: cores / workers).")] = None,
    address: Annotated[str | None, typer.Option(help="ps across machines: HOST:PORT the server listens on "
                                                     "(no local workers) and the workers join.")] = None,
    rank: Annotated[int | None, typer.Option(min=1, help="ps across machines: run as this worker (1..workers) of the "
                                                  "server at --address.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 5,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default by strategy).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step (per worker).")] = 32,
    blocks: Annotated[int, typer.Option(min=1, help="partial: how many of the last blocks learn.")] = 3,
    backbone: Backbone = "mobilenet_v2",
    weights: Weights = None,
    input_size: Annotated[int | None, typer.Option(min=1, help="Square input size.")] = None,
    patch: Annotated[int | None, typer.Option(min=1, help="Train on patches of this size (inspection protocol; "
                                                          "on a VOC folder each patch holds a defect's box).")]
    = None,
    grid: Annotated[int, typer.Option(min=1, help="With --patch: grid x grid patches cover a test image.")] = 3,
    start_from: Annotated[Path | None, typer.Option("--from", help="Continue from an earlier result (an online "
                                                                   "session on new data).")] = None,
    max_norm: Annotated[float | None, typer.Option(help="Weight constraint: each unit's weights at most this "
                                                        "norm (3 in Mottakin's online sessions).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout before the head (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, sampling and augmentation.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT.ckpt after an interruption.")] = False,
    as_json: Json = False,
):
    """Train a classifier (transfer learning) in one process or across several; the best epoch by
    validation loss is kept and loads as a backbone afterwards (--weights OUTPUT) or, with --patch, as
    an inspection teacher."""
    from edgelearn.data.patches import PatchGrid
    from edgelearn.training import TrainConfig
    from edgelearn.training import train as run_train

    if mode != Mode.ps:  # only the parameter server runs across machines
        refuse_together(ctx, f"--mode {mode}", "address", "rank", *(["workers"] if mode == Mode.single else []))
    config = TrainConfig(dataset, output, backbone=backbone, weights=default_weights(weights, backbone),
                         strategy=strategy.value, epochs=epochs, lr=lr, batch_size=batch_size, input_size=input_size,
                         trainable_blocks=blocks, patch=patch and PatchGrid(patch, grid), start_from=start_from,
                         max_norm=max_norm, dropout=dropout, seed=seed, mode=mode.value, workers=workers,
                         threads=threads, address=address, rank=rank, resume=resume)
    result = run_train(config, progress=err.is_terminal, log=log)
    if rank is not None:
        emit(result, as_json, f"worker {rank} done: the server at {address} holds the model")
        return
    emit(result, as_json, history_table(result, output))


def distill(
    dataset: Annotated[Path, typer.Argument(help="Folder data set: <class>/*.png (its train/ split if any).")],
    teacher: Annotated[Path | None, typer.Option(help="The teacher (edgelearn train --patch); "
                                                       "without one the student learns from the labels.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The student (+ .json, .ckpt, .png).")]
    = Path("student.pt"),
    filters: Annotated[str, typer.Option(help="Filters of the five conv layers (Kim, Noh and Park's Table 1).")]
    = "4,8,16,4,4",
    hidden: Annotated[int, typer.Option(min=1, help="Units of the hidden fully connected layer.")] = 256,
    alpha: Annotated[float, typer.Option(min=0, max=1, help="Weight of the hard labels next to the teacher's "
                                                             "logits.")] = 0.0,
    patches_per_image: Annotated[int, typer.Option(min=1, help="Random flipped/rotated patches per training "
                                                                "image.")] = 8,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the transfer set.")] = 30,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW).")] = 3e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per step.")] = 64,
    patch: Annotated[int, typer.Option(min=1, help="Without a teacher: patch size.")] = 128,
    grid: Annotated[int, typer.Option(min=1, help="Without a teacher: grid x grid test patches.")] = 3,
    input_size: Annotated[int | None, typer.Option(min=1, help="The student's input (default: the teacher's, or the "
                                                        "patch size); smaller = patches scaled down.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, patches and initial weights.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT.ckpt after an interruption.")] = False,
    as_json: Json = False,
):
    """Train the shallow student of Kim, Noh and Park ("Efficient neural network compression via transfer
    learning for machine vision inspection"): regress a teacher's logits (or learn the labels alone)."""
    from edgelearn.data.patches import PatchGrid
    from edgelearn.inspection import distill as run_distill

    try:
        sizes = tuple(int(v) for v in filters.split(","))
    except ValueError:
        raise ParameterError(f"--filters takes comma-separated whole numbers such as 4,8,16,4,4, "
                             f"got {filters!r}") from None
    result = run_distill(dataset, output, teacher=teacher, patch=None if teacher else PatchGrid(patch, grid),
                         input_size=input_size, filters=sizes, hidden=hidden, alpha=alpha,
                         patches_per_image=patches_per_image, epochs=epochs,
                         lr=lr, batch_size=batch_size, seed=seed, resume=resume, progress=err.is_terminal,
                         log=log)
    table = history_table(result, output)
    table.caption += f"; {result['parameters']:,} parameters"
    emit(result, as_json, table)


def inspect(
    model: Annotated[Path, typer.Argument(help="A patch classifier (edgelearn train --patch / distill).")],
    target: Annotated[Path, typer.Argument(help="An image, a folder of images, or a data set (its test/ split "
                                                "is evaluated).")],
    as_json: Json = False,
):
    """Inspect by patches: the class is the patches' majority, an image is defective if any patch is.
    On a data set: accuracy, per-class TPR/TNR, parameters and ms per image."""
    from edgelearn.data.images import IMAGE_SUFFIXES, load_image
    from edgelearn.inspection import Inspector, evaluate_inspection

    if not target.exists():
        raise ParameterError(f"not found: {target}")
    inspector = Inspector.load(model)
    images = [target] if target.is_file() else sorted(p for p in target.iterdir()
                                                      if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if images:
        results = [{"image": str(p), **vars(r)} for p in images for r in inspector.inspect([load_image(p)])]
        table = Table("image", "class", "defective", "patch votes")
        for r in results:
            table.add_row(r["image"], r["label"], "yes" if r["defective"] else "no", json.dumps(r["votes"]))
        emit({"inspections": results}, as_json, table)
        return
    report = evaluate_inspection(inspector, FolderDataset.test_split(target))
    report["ms_per_image"] = inspector.ms_per_image()
    table = Table("class", "images", "TPR", "TNR")
    for c, row in report["per_class"].items():
        table.add_row(c, str(row["n"]), *(f"{row[k]:.2%}" if row[k] is not None else "-" for k in ("tpr", "tnr")))
    table.caption = (f"accuracy {report['accuracy']:.2%} on {report['images']} images; "
                     f"{report['parameters']:,} parameters; {report['ms_per_image']:.2f} ms per image "
                     f"({report['patches_per_image']} patches)")
    if "defect_detection" in report:
        d = report["defect_detection"]
        table.caption += f"; defects found {d['tpr']:.2%}, defect-free passed {d['tnr']:.2%}"
    emit(report, as_json, table)


def analyse(
    model: Annotated[Path, typer.Argument(help="A patch classifier (edgelearn train --patch / distill).")],
    dataset: Annotated[Path, typer.Argument(help="Images for sparsity and disentanglement (test/ split if any).")],
    weights: Weights = None,
    images: Annotated[int, typer.Option(min=1, help="At most this many images (one centre patch each).")] = 400,
    plot: Annotated[Path | None, typer.Option(help="Write gamma and sparsity per layer to this PNG.")] = None,
    as_json: Json = False,
):
    """What the network learned, measured as Kim, Noh and Park do: weight change per conv layer since its
    initial weights, dead-channel sparsity per layer, and the disentanglement d of its last conv representation."""
    from edgelearn.inspection.analysis import analyse_model, plot_analysis

    ds = FolderDataset.test_split(dataset)
    result = analyse_model(model, ds.sample_per_class(max(1, images // len(ds.classes))),
                           initial_weights=default_weights(weights))
    if plot is not None:
        plot_analysis({model.stem: result}, plot)
    table = Table("layer", "γ (weight change)", "s (sparsity)")
    for name in result["sparsity"]:
        gamma = result["weight_change"].get(result["conv_of"].get(name, ""), None)
        table.add_row(name, "-" if gamma is None else f"{gamma:.3f}", f"{result['sparsity'][name]:.2%}")
    d = result["disentanglement"]
    table.caption = f"disentanglement d = {d['d']:.3f} over {d['points']} images"
    emit(result, as_json, table)


