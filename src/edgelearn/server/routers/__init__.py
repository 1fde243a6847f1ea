"""The API's routes, one router per area; each endpoint gets the station as ``station: StationDep``."""

from edgelearn.server.routers import knowledge, learn, queue, recognize, status

ROUTERS = [recognize.router, learn.router, knowledge.router, queue.router, status.router]
