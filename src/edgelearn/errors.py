"""The project's own exception types: every error a user can cause is one of these.

The CLI prints their message on one line and exits with status 1; library users catch
:class:`EdgelearnError` to tell their own mistakes from bugs.
"""


class EdgelearnError(Exception):
    """Base class of every error a user can cause (bad input, bad path, bad parameter)."""


class ImageError(EdgelearnError, ValueError):
    """An image could not be read: missing, corrupt, truncated, not an image, or too large."""


class DatasetError(EdgelearnError, ValueError):
    """A data set folder is missing, empty, or laid out in a way we cannot read."""


class IncompatibleError(EdgelearnError, ValueError):
    """Saved knowledge does not fit: another backbone, feature width, learner kind or format."""


class ModelFileError(EdgelearnError, ValueError):
    """A model file is missing, truncated, malformed or of an unknown format version."""


class WeightsError(EdgelearnError, RuntimeError):
    """Backbone weights could not be found, downloaded or loaded."""


class NotFittedError(EdgelearnError, ValueError):
    """A learner was asked to predict before it learned anything."""


class SignatureError(EdgelearnError):
    """A package's signature is missing, wrong, or made by a site we do not trust."""


class FederationError(EdgelearnError, RuntimeError):
    """A federation could not start or finish (a process died, a site did not connect in time)."""


class NotFoundError(EdgelearnError, LookupError):
    """Something asked for by number or name does not exist (a knowledge version, a queue item)."""


class LabelError(EdgelearnError, ValueError):
    """A class name breaks the label rule (empty, too long, too deep, control characters, '.' or '..')."""


class StoreError(EdgelearnError):
    """A station's store is damaged or inconsistent (empty, truncated, altered events, no active version)."""


class ConflictError(EdgelearnError):
    """The request collides with another one (a queue item someone already labelled): HTTP 409."""


class GoneError(NotFoundError):
    """Something that existed was pruned on purpose (an old knowledge version's package): HTTP 410."""


class TooLargeError(ImageError):
    """An image or a request holds more pixels, images or bytes than the station's limits allow."""


class BusyError(EdgelearnError, RuntimeError):
    """The station is at its limit of concurrent work; the client should try again in a moment."""


class ParameterError(EdgelearnError, ValueError):
    """A parameter is out of range, or options were combined that do not go together."""


class WriteError(EdgelearnError, OSError):
    """A result could not be written where asked: a file stands where a folder should, or no permission."""


class NearDuplicateError(ConflictError):
    """A new class name differs from a known one only in case or spacing (HTTP 409 with ``suggestion``)."""

    def __init__(self, suggestion: str):
        super().__init__(f"did you mean {suggestion!r}?")
        self.suggestion = suggestion
