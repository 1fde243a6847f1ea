"""The station's memory on disk: one SQLite file (WAL) with schema migrations."""

from edgelearn.store.sqlite import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "Store"]
