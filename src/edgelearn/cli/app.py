"""The `edgelearn` command: the Typer app, its sub-commands, and the registration of every command.

Every reporting command takes ``--json`` (one JSON object on stdout, progress on stderr).
Exit codes: 0 success, 1 a user error (one line on stderr), 2 a usage error (Typer's own: a wrong
option, a wrong choice, options that do not go together).
"""

import typer

from edgelearn.cli import backbone, data, detect, evaluate, plant, recognize, share, station, train
from edgelearn.cli.output import user_errors

app = typer.Typer(help="Image recognition that keeps learning on the edge.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(help="Site keys for signing knowledge packages.", no_args_is_help=True)
detector_app = typer.Typer(help="Object detectors: train (new classes without forgetting), evaluate, export.",
                           no_args_is_help=True)
store_app = typer.Typer(help="A station's store: check (and repair), back up.", no_args_is_help=True)


def _register(group: typer.Typer, *commands, **named) -> None:
    """Add commands to a group (named after their function, or by keyword); a user's mistake in any of
    them ends as one line on stderr, not a traceback."""
    for command in commands:
        group.command()(user_errors(command))
    for name, command in named.items():
        group.command(name)(user_errors(command))


_register(app, recognize.learn, recognize.predict, evaluate.evaluate, evaluate.calibrate, recognize.consolidate,
          recognize.info, recognize.demo)
_register(app, station.serve)
_register(app, plant.watch)
_register(app, share.merge, share.federate, share.federate_train)
_register(app, train.train, train.distill, train.inspect, train.analyse)
_register(app, data.representatives, data.frames, data.compress)
_register(app, detect.detect)
_register(app, backbone.export_backbone)
_register(keys_app, new=share.keys_new)
_register(detector_app, train=detect.detector_train, evaluate=detect.detector_evaluate, export=detect.detector_export)
_register(store_app, check=station.store_check, backup=station.store_backup)
app.add_typer(keys_app, name="keys")
app.add_typer(detector_app, name="detector")
app.add_typer(store_app, name="store")
