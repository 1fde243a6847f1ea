"""What both server apps need of the grid: the sites that connected."""

import time

from flwr.serverapp import Grid

from edgelearn.errors import FederationError


def wait_for_nodes(grid: Grid, count: int, timeout: float = 120.0) -> list[int]:
    """The SuperNodes' ids once ``count`` have connected; :class:`FederationError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {count} sites connected within {timeout:.0f} s")
        time.sleep(0.5)
    return nodes
