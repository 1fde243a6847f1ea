"""Options shared by several commands, and a StrEnum for every choice: Typer then refuses a wrong choice
as a usage error (exit 2) that lists the valid ones."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from edgelearn.backbones import WEIGHTS_ENV
from edgelearn.backbones.weights import default_weights as weights_default
from edgelearn.knowledge import SiteKey
from edgelearn.runtime import Precision as Precision  # the library's own choices
from edgelearn.runtime import Runtime as Runtime


class Learner(StrEnum):
    """Module B's incremental learner."""
    fuzzy_artmap = "fuzzy-artmap"
    slda = "slda"
    ncm = "ncm"


class Consolidation(StrEnum):
    """When a learner folds its fast memory during a stream."""
    none = "none"
    after_each_step = "after_each_step"
    final = "final"


class Fold(StrEnum):
    """How Fuzzy ARTMAP folds a class's representations."""
    union = "union"
    mean = "mean"


class Strategy(StrEnum):
    """Which part of a network learns: the new head, the last blocks too, or everything."""
    frozen = "frozen"
    partial = "partial"
    full = "full"


class Mode(StrEnum):
    """Training in this process, synchronous data parallel, or an asynchronous parameter server."""
    single = "single"
    ddp = "ddp"
    ps = "ps"


class FederatedStrategy(StrEnum):
    """How sites train a network's last layers together: averaged weights, or TeAM's per-class paths."""
    fedavg = "fedavg"
    team = "team"


class Arch(StrEnum):
    """Detector head: MobileNet SSDlite, or RetinaNet (focal loss)."""
    ssdlite = "ssdlite"
    retinanet = "retinanet"


class Dedupe(StrEnum):
    """Drop near-duplicate video frames by perceptual hash, or keep them all."""
    phash = "phash"
    none = "none"


class Similarity(StrEnum):
    """How representative images are compared: image hashes, histograms, SSIM, MSE or backbone features."""
    ahash = "ahash"
    average = "average"
    average_hash = "average_hash"
    colorhash = "colorhash"
    colourhash = "colourhash"
    dhash = "dhash"
    feature = "feature"
    hist = "hist"
    hist_bhattacharyya = "hist_bhattacharyya"
    hist_chisqr = "hist_chisqr"
    hist_intersect = "hist_intersect"
    mse = "mse"
    phash = "phash"
    ssim = "ssim"
    whash = "whash"


Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Weights = Annotated[str | None, typer.Option(
    envvar=WEIGHTS_ENV, help="Backbone weights: a state-dict file, a bundle (NAME.edgebundle, from "
                                                 "export-backbone: runs without PyTorch), 'download' or 'random'.")]
RuntimeOption = Annotated[Runtime, typer.Option(help="Run the backbone on torch or onnx (ONNX Runtime: same "
                                                     "features, faster on CPUs).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the feature cache.")]
Key = Annotated[Path | None, typer.Option(help="This site's private key (edgelearn keys new): sign the output.")]
LearnerOption = Annotated[Learner, typer.Option(help="Module B's incremental learner.")]
Backbone = Annotated[str, typer.Option(help="torchvision model name.")]
InputSize = Annotated[int | None, typer.Option(help="Square input size (224 standard; 96 as in Maschler et al.'s "
                                                    "ImageNet-10).")]
Model = Annotated[Path, typer.Argument(help="A saved model (.edge).")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Leave out images that cannot be read and list them all "
                                                          "at the end (default: the first one stops the command).")]



PrecisionOption = Annotated[Precision | None, typer.Option(
    help="Module A's precision: a bundle runs at the one it was exported at (another is refused; default: its "
         "own); PyTorch weights at fp16 or int8-dynamic need --runtime onnx (int8 needs calibration: export a "
         "bundle).")]


def default_weights(weights: str | None, backbone: str = "mobilenet_v2") -> str:
    """The one default every command shares (:func:`edgelearn.backbones.weights.default_weights`)."""
    return weights_default(weights, backbone)


def site_key(path: Path | None) -> SiteKey | None:
    """The site key that signs a command's output, if one was given."""
    return SiteKey.load(path) if path is not None else None


def refuse_together(ctx: typer.Context, option: str, *others: str) -> None:
    """A usage error (exit 2) when any of ``others`` (parameter names) was given beside ``option``, which
    would silently ignore them. (Through the command's own context: Typer 0.2x runs its own copy of Click.)"""
    sources = {name: ctx.get_parameter_source(name) for name in others}
    given = [name for name, source in sources.items() if source is not None and source.name != "DEFAULT"]
    if given:
        names = ", ".join("--" + name.replace("_", "-") for name in given)
        ctx.fail(f"{option} does not use {names}: leave {'it' if len(given) == 1 else 'them'} out")
