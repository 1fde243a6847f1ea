"""Flower ClientApp: a site answers 'train' with its own knowledge and 'evaluate' by installing the merged one."""

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgelearn.federation.knowledge.site import Site


def create_client_app(config: dict | None = None) -> ClientApp:
    """The ClientApp; ``config`` overrides the run config (the simulation runtime passes none)."""
    app = ClientApp()

    def site_of(context: Context) -> Site:
        site = Site.from_config(dict(context.node_config), {**dict(context.run_config), **(config or {})})
        site.workdir.mkdir(parents=True, exist_ok=True)
        return site

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = site_of(context)
        package, new = site.learn_new()
        content = RecordDict({
            "knowledge": ConfigRecord({"package": package, "site": site.name}),
            "metrics": MetricRecord({"new-examples": new, "bytes-sent": len(package)}),
        })
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        package = msg.content["knowledge"]["package"]
        metrics = {**site_of(context).receive(package), "bytes-received": len(package)}
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = create_client_app()
