"""The API's routes, one router per area; each endpoint gets the station as ``station: StationDep``.

A new area is a module here with ``router = APIRouter(prefix="/api", tags=[AREA])``, listed in ``ROUTERS``."""

from edgelearn.server.routers import camera, classes, knowledge, learn, queue, recognize, status

ROUTERS = [recognize.router, learn.router, knowledge.router, queue.router, status.router, classes.router,
           camera.router]
