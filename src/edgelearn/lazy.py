"""Names a package re-exports but imports only when first used (PEP 562), so that importing the
package stays cheap (no PyTorch for the numpy-only parts)."""

import importlib
import sys


def lazy_attributes(package: str, where: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that imports ``name`` from the module ``where[name]``
    on first use and keeps it in the package, so later lookups do not come back here."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
