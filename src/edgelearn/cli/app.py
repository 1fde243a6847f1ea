"""The `edgelearn` command: the Typer app, its sub-commands, and the registration of every command.

Every reporting command takes ``--json`` (one JSON object on stdout, progress on stderr).
Exit codes: 0 success, 1 a user error (one line on stderr), 2 a usage error (Typer's own: a wrong
option, a wrong choice, options that do not go together).
"""

import typer

from edgelearn.cli import data, detect, recognize, share, station, train
from edgelearn.cli.output import user_errors

app = typer.Typer(help="Image recognition that keeps learning on the edge.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(help="Site keys for signing knowledge packages.", no_args_is_help=True)
detector_app = typer.Typer(help="Object detectors: train (new classes without forgetting), evaluate, export.",
                           no_args_is_help=True)
store_app = typer.Typer(help="A station's store: check (and repair), back up.", no_args_is_help=True)


def _register(group: typer.Typer, *commands, names: tuple[str, ...] = ()) -> None:
    """Add commands to a group; a user's mistake in any of them ends as one line, not a traceback."""
    for command, name in zip(commands, names or (None,) * len(commands), strict=True):
        group.command(name)(user_errors(command))


_register(app, station.serve, recognize.learn, recognize.predict, recognize.evaluate, recognize.calibrate,
          recognize.consolidate, recognize.info, recognize.demo, share.merge, share.federate)
_register(app, share.federate_train, names=("federate-train",))
_register(keys_app, share.keys_new, names=("new",))
_register(app, data.representatives, data.frames, data.compress, train.train, train.distill, train.inspect,
          train.analyse)
_register(detector_app, detect.detector_train, detect.detector_evaluate, detect.detector_export,
          names=("train", "evaluate", "export"))
_register(app, detect.detect)
_register(store_app, station.store_check, station.store_backup, names=("check", "backup"))
app.add_typer(keys_app, name="keys")
app.add_typer(detector_app, name="detector")
app.add_typer(store_app, name="store")
