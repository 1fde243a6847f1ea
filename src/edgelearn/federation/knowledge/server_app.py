"""Flower ServerApp: collect every site's own knowledge, merge it, send the merged knowledge back."""

import json
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from edgelearn.errors import FederationError
from edgelearn.federation.nodes import wait_for_nodes
from edgelearn.knowledge import ImportPolicy, SiteKey, TrustStore, merge_packages


def create_server_app(config: dict | None = None) -> ServerApp:
    """The ServerApp; ``config`` overrides the run config (the simulation runtime passes none)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run({**dict(context.run_config), **(config or {})}, grid)

    return app


def run(cfg: dict, grid: Grid) -> list[dict]:
    """The rounds: ask every site for its own knowledge, merge, send the merged knowledge back."""
    trust = TrustStore.load(cfg["trust-dir"]) if cfg.get("trust-dir") else None
    policy = ImportPolicy(trust, bool(cfg.get("allow-unsigned", False)))  # signed by trusted sites by default
    key = SiteKey.load(cfg["server-key"]) if cfg.get("server-key") else None
    nodes = wait_for_nodes(grid, int(cfg.get("min-sites", 2)))
    history = []
    for rnd in range(1, int(cfg.get("num-rounds", 1)) + 1):
        ask = [Message(RecordDict({"config": ConfigRecord({"round": rnd})}), dst_node_id=n,
                       message_type=MessageType.TRAIN) for n in nodes]
        replies = [r for r in grid.send_and_receive(ask) if not r.has_error()]
        if not replies:
            raise FederationError(f"round {rnd}: no site answered")
        packages = [r.content["knowledge"]["package"] for r in replies]
        merged = merge_packages(*packages, policy=policy, consolidate=bool(cfg.get("consolidate", False)), key=key,
                                site=key.site if key else "server",
                                names=[f"site {r.content['knowledge']['site']}'s package" for r in replies])
        give = [Message(RecordDict({"knowledge": ConfigRecord({"package": merged})}), dst_node_id=n,
                        message_type=MessageType.EVALUATE) for n in nodes]
        results = [dict(r.content["metrics"]) for r in grid.send_and_receive(give) if not r.has_error()]
        history.append({"round": rnd, "sites": len(replies),
                        "bytes_sent_per_site": [len(p) for p in packages], "bytes_merged": len(merged),
                        "site_metrics": results})
        print(f"round {rnd}: {len(replies)} sites, merged package {len(merged):,} bytes, "
              f"site accuracy {[m.get('accuracy') for m in results]}", flush=True)
    if cfg.get("output"):
        Path(cfg["output"]).write_text(json.dumps(history, indent=1))
    return history


app = create_server_app()
