"""How commands answer: a table for people, one JSON object for scripts (``--json``), and a user's
mistake as one line on stderr with exit status 1."""

import functools
import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgelearn.errors import EdgelearnError

out = Console()
err = Console(stderr=True, soft_wrap=True)


def emit(result: dict, as_json: bool, table: Table | str | None = None) -> None:
    """``result`` as one JSON line with ``--json``, otherwise ``table`` (if any) for people."""
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    elif table is not None:
        out.print(table)


def log(line: str) -> None:
    """Progress for people, on stderr (stdout stays one JSON object)."""
    err.print(line, highlight=False)


# what the [train] extra adds to the device install
WORKSTATION_ONLY = {"torch", "torchvision", "onnx", "onnxscript", "torchmetrics", "pycocotools", "scipy", "skimage",
                    "imagehash", "matplotlib"}


def user_errors(command):
    """Print a user's mistake (an :class:`EdgelearnError`) as one line on stderr and exit 1.

    Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgelearnError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] not in WORKSTATION_ONLY:
                raise
            message = (f"this command needs the workstation install ({exc.name} is missing): "
                       f"pip install 'edgelearn[train]'")
            err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def steps_table(history: list[dict], evaluation: dict | None) -> Table:
    """A class-incremental stream: classes, memory and accuracy after each step."""
    table = Table("step", "classes", "representations", "learner bytes", "accuracy (seen classes)")
    for h in history:
        acc = f"{h['accuracy_seen']:.1%}" if "accuracy_seen" in h else "-"
        table.add_row(str(h["step"]), str(h["classes"]), str(h["representations"]), f"{h['learner_bytes']:,}", acc)
    if evaluation:
        table.caption = f"final: top-1 {evaluation['accuracy']:.2%}, top-5 {evaluation['top5']:.2%}, " \
                        f"n={evaluation['n']}"
    return table


def history_table(result: dict, output) -> Table:
    """A training run: losses and validation accuracy per epoch, and where the best epoch went."""
    table = Table("epoch", "train loss", "val loss", "val accuracy", "seconds")
    for h in result["history"]:
        table.add_row(str(h["epoch"]), f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{h['val_accuracy']:.1%}",
                      f"{h['seconds']:.1f}")
    table.caption = f"best epoch {result['best_epoch']} saved to {output}; curves in {output.with_suffix('.png')}"
    if "test_accuracy" in result:
        table.caption += f"; test accuracy {result['test_accuracy']:.1%} (best epoch, test/)"
    if result.get("test_classes_left_out"):
        table.caption += f"; test classes it never trained on, left out: {', '.join(result['test_classes_left_out'])}"
    return table


def open_set_line(r: dict) -> str:
    """How well a model tells unknown images apart (``evaluate --unknown``), in one line."""
    return (f"unknown images: AUROC {r['auroc']:.3f}, {r['fpr95']:.1%} let through at 95 % of known kept "
            f"(top probability: AUROC {r['max_probability']['auroc']:.3f}); accuracy with rejection "
            f"{r['accuracy_with_rejection']:.1%} (closed set {r['closed_set_accuracy']:.1%}); "
            f"n={r['n_known']} known + {r['n_unknown']} unknown")
