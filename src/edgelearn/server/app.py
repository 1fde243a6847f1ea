"""The station's HTTP API (FastAPI) and web page.

Writes (learning, consolidation, rollback, imports, labelling) need the station's token as
``Authorization: Bearer <token>``; reads need a read or write token where the station says so
(``Guard``: always for the feedback log, images and the knowledge export), checked before the body
is read. Endpoints are plain ``def``: FastAPI runs them in its thread pool, so predictions proceed
concurrently while the station serialises learning. The routes are in ``routers/`` (one per area);
what they need of the app comes through ``deps``.
OpenAPI docs: ``/docs``.
"""

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from edgelearn import __version__
from edgelearn.errors import (
    BusyError,
    ConflictError,
    EdgelearnError,
    GoneError,
    NearDuplicateError,
    NotFoundError,
    TooLargeError,
)
from edgelearn.server.camera import Camera
from edgelearn.server.guard import Guard, Tokens, served_names
from edgelearn.server.idempotency import IdempotencyKeys
from edgelearn.server.limits import DecodeSlots, Limits
from edgelearn.server.routers import ROUTERS
from edgelearn.server.size import MAX_UPLOAD_BYTES, SizeLimit
from edgelearn.server.station import Station, StationConfig

STATIC = Path(__file__).parent / "static"
DESCRIPTION = ("Recognise, explain, and learn from corrections. Writes need the station token; the feedback log, "
               "images and export need a read or write token, and so does every read on a station bound beyond "
               "loopback or started with --read-token.")


def create_app(station: Station | StationConfig, token: str, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               limits: Limits | None = None, read_token: str | None = None, users: dict[str, str] | None = None,
               reads_need_token: bool = False, allowed_hosts: set[str] | None = None,
               camera: Camera | None = None) -> FastAPI:
    """The API over ``station`` (or over a Station that the app builds from a ``StationConfig`` when it
    starts); either way the station is closed when the app shuts down. Writes need ``token`` (or a
    ``users`` token: name -> token), reads need ``read_token`` or a write token if ``reads_need_token``;
    ``Host`` must be one of ``allowed_hosts`` (default: this machine's loopback names and hostname) or
    an IP address; what one request may cost: ``limits``. A ``camera`` starts deciding through the station
    when the app starts and stops, with its sinks, when it shuts down."""
    tokens = Tokens(token, read_token, users or {})
    limits = limits or Limits()
    app = FastAPI(title="edgelearn station", version=__version__, description=DESCRIPTION, lifespan=_lifespan,
                  exception_handlers={EdgelearnError: _user_error, ConflictError: _conflict, GoneError: _gone,
                                      NearDuplicateError: _near_duplicate,
                                      TooLargeError: _too_large, BusyError: _busy})
    app.state.station_config = station if isinstance(station, StationConfig) else None
    if isinstance(station, Station):
        app.state.station = station
    app.state.tokens, app.state.limits, app.state.max_upload_bytes = tokens, limits, max_upload_bytes
    app.state.decode_slot = DecodeSlots(limits.decode_slots)
    app.state.camera = camera

    app.add_middleware(SizeLimit, max_bytes=max_upload_bytes)
    app.add_middleware(IdempotencyKeys)  # keeps answers in the station's store
    app.add_middleware(Guard, tokens=tokens, hosts=allowed_hosts or served_names(),
                       reads_need_token=reads_need_token)  # outermost: before the body and any other work
    for router in ROUTERS:
        app.include_router(router)
    app.add_api_route("/", _page, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    if app.state.station_config is not None:
        app.state.station = Station(app.state.station_config)
    if app.state.camera is not None:
        app.state.camera.start(app.state.station)
    yield
    if app.state.camera is not None:
        app.state.camera.close()  # first: its last decision still needs the station
    app.state.station.close()  # graceful shutdown: uvicorn drained the requests; checkpoint the WAL


def _page():
    return FileResponse(STATIC / "index.html")


# a user's mistake: 4xx with its message; anything else is a bug (500)
async def _user_error(request: Request, exc: Exception):
    return JSONResponse({"detail": str(exc)}, 404 if isinstance(exc, NotFoundError) else 400)


async def _conflict(request: Request, exc: Exception):
    return JSONResponse({"detail": str(exc)}, 409)


async def _near_duplicate(request: Request, exc: NearDuplicateError):
    return JSONResponse({"detail": str(exc), "suggestion": exc.suggestion}, 409)


async def _gone(request: Request, exc: Exception):
    return JSONResponse({"detail": str(exc)}, 410)


async def _too_large(request: Request, exc: Exception):
    return JSONResponse({"detail": str(exc)}, 413)


async def _busy(request: Request, exc: Exception):
    return JSONResponse({"detail": str(exc)}, 429, headers={"Retry-After": "1"})
