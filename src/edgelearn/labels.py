"""The one rule for class names, wherever they come from: the CLI, the API, zip and data-set folder
names, imported packages. Plain Python, so every layer can use it."""

import unicodedata

from edgelearn.errors import LabelError

MAX_LABEL_CHARS = 200
MAX_LABEL_LEVELS = 16


def check_label(label) -> str:
    """The one rule for class names, wherever they come from (CLI, API, zip folders, packages):
    a name or concept path ``a/b/c`` of at most 200 characters and 16 levels, without control or
    bidirectional-override characters and without empty, ``.`` or ``..`` levels. Returns it trimmed.

    Examples
    --------
    >>> check_label(" fasteners/bolt_m8/ ")
    'fasteners/bolt_m8'
    >>> check_label("a/../b")
    Traceback (most recent call last):
    ...
    edgelearn.errors.LabelError: invalid label 'a/../b': '..' is not a name; use a name or a concept path ...
    """
    if not isinstance(label, str | int) or isinstance(label, bool):
        raise LabelError(f"invalid label {label!r}: a label is text")
    text = str(label).strip().strip("/")
    problem = _label_problem(text)
    if problem:
        raise LabelError(f"invalid label {text[:MAX_LABEL_CHARS]!r}: {problem}; "
                         "use a name or a concept path like 'car/wheel'")
    return text


def _label_problem(text: str) -> str | None:
    if not text:
        return "it is empty"
    if len(text) > MAX_LABEL_CHARS:
        return f"longer than {MAX_LABEL_CHARS} characters"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text):
        return "it holds control or invisible formatting characters"
    parts = text.split("/")
    if len(parts) > MAX_LABEL_LEVELS:
        return f"more than {MAX_LABEL_LEVELS} levels"
    for part in parts:
        if not part.strip():
            return "an empty level"
        if part.strip() in (".", ".."):
            return f"{part.strip()!r} is not a name"
    return None


def label_key(label: str) -> str:
    """What two class names share when a person means the same class: case, spaces, '_' and '-' aside.

    >>> label_key("Gas Pump") == label_key("gas_pump")
    True
    """
    return "".join(ch for ch in label.casefold() if not (ch.isspace() or ch in "_-"))
