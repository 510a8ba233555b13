"""The fleet's ServerApp: runs in the SuperLink's ``flwr-serverapp`` process on the laptop, where edgetl is
installed; the rounds, the aggregation and the evaluation live in :mod:`edgetl.fleet.server`."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from edgetl.fleet.server import serve

    serve(grid, str(context.run_config["fleet-config"]))
