"""The station's HTTP API (FastAPI) and web page.

Writes (learning, consolidation, rollback, imports, labelling) need the station's token as
``Authorization: Bearer <token>``; reads need a read or write token where the station says so
(``Guard``: always for the feedback log, images and the knowledge export), checked before the body
is read. Endpoints are plain ``def``: FastAPI runs them in its thread pool, so predictions proceed
concurrently while the station serialises learning.
OpenAPI docs: ``/docs``.
"""

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from edgelearn import __version__
from edgelearn.data.images import load_image
from edgelearn.errors import (
    BusyError,
    ConflictError,
    EdgelearnError,
    GoneError,
    NearDuplicateError,
    NotFoundError,
    TooLargeError,
)
from edgelearn.server.guard import WRITE, Guard, Tokens, served_names
from edgelearn.server.idempotency import IdempotencyKeys
from edgelearn.server.limits import Budget, DecodeSlots, Limits
from edgelearn.server.station import THUMBNAIL_SIDE, Station
from edgelearn.server.uploads import kind_of, labelled_images

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 200 * 2**20  # one request: a zip or a short video
MAX_IMAGE_BYTES = 20 * 2**20
FORM_OVERHEAD = 2**20  # a form's boundaries, headers and small fields around its file
SMALL_BODY_BYTES = 64 * 2**10  # requests that carry no file: a label, nothing at all


class SizeLimit:
    """Refuse a request whose body is over its route's limit: at once if it says so (Content-Length),
    else as soon as the bytes received pass it (chunked bodies). Plain ASGI: Starlette's
    BaseHTTPMiddleware would cost every request a few milliseconds."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def limit(self, scope) -> int:
        if scope["path"] in ("/api/learn", "/api/knowledge"):
            return self.max_bytes
        if scope["path"] == "/api/predict":
            return min(self.max_bytes, MAX_IMAGE_BYTES + FORM_OVERHEAD)
        return min(self.max_bytes, SMALL_BODY_BYTES)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope)
        too_large = f"this request is larger than {_size(limit)}"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await JSONResponse({"detail": too_large}, 413)(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # the endpoint stops reading; FastAPI answers 413
                raise HTTPException(413, too_large)
            return message

        await self.app(scope, counted_receive, send)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 2**10} KiB"


def create_app(station: Station, token: str, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               limits: Limits | None = None, read_token: str | None = None, users: dict[str, str] | None = None,
               reads_need_token: bool = False, allowed_hosts: set[str] | None = None) -> FastAPI:
    """The API over ``station``; writes need ``token`` (or a ``users`` token: name -> token), reads need
    ``read_token`` or a write token if ``reads_need_token``; ``Host`` must be one of ``allowed_hosts``
    (default: this machine's loopback names and hostname) or an IP address; what one request may cost:
    ``limits``."""
    tokens = Tokens(token, read_token, users or {})
    limits = limits or Limits()
    max_pixels = limits.image_pixels
    decode_slot = DecodeSlots(limits.decode_slots)
    # decode big images at about what the network (and a thumbnail) needs, not at full size
    fit = max(station.rec.backbone.preprocessing.resize_size, THUMBNAIL_SIDE)

    @asynccontextmanager
    async def lifespan(app):
        yield
        station.close()  # graceful shutdown: uvicorn drained the requests; checkpoint the WAL

    app = FastAPI(title="edgelearn station", version=__version__, lifespan=lifespan,
                  description="Recognise, explain, and learn from corrections. Writes need the station token; "
                              "the feedback log, images and export need a read or write token, and so does every "
                              "read on a station bound beyond loopback or started with --read-token.")
    bearer = HTTPBearer(auto_error=False)

    def writer(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str | None:
        """Checks the token (Guard did already, before the body); returns who is writing: with ``users``,
        the name whose token it is, else the ``X-User`` header (a free label, for the feedback log)."""
        access, name = tokens.who(credentials.credentials if credentials else None)
        if access != WRITE:
            raise HTTPException(401, "this needs the station's token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        return name if users else request.headers.get("x-user") or None

    def reader(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> bool:
        """Whether the request carries a read or write token."""
        return tokens.who(credentials.credentials if credentials else None)[0] is not None

    Writer = Annotated[str | None, Depends(writer)]

    app.add_middleware(SizeLimit, max_bytes=max_upload_bytes)
    app.add_middleware(IdempotencyKeys, store=station.store)
    app.add_middleware(Guard, tokens=tokens, hosts=allowed_hosts or served_names(),
                       reads_need_token=reads_need_token)  # outermost: before the body and any other work

    @app.exception_handler(EdgelearnError)  # a user's mistake: 4xx with its message; anything else is a bug (500)
    async def user_error(request: Request, exc: Exception):
        return JSONResponse({"detail": str(exc)}, 404 if isinstance(exc, NotFoundError) else 400)

    @app.exception_handler(ConflictError)
    @app.exception_handler(GoneError)
    async def conflict_or_gone(request: Request, exc: Exception):
        return JSONResponse({"detail": str(exc)}, 409 if isinstance(exc, ConflictError) else 410)

    @app.exception_handler(TooLargeError)
    @app.exception_handler(BusyError)
    async def over_limit(request: Request, exc: Exception):
        if isinstance(exc, BusyError):
            return JSONResponse({"detail": str(exc)}, 429, headers={"Retry-After": "1"})
        return JSONResponse({"detail": str(exc)}, 413)

    def read(upload: UploadFile, limit: int) -> bytes:
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{upload.filename}: larger than {limit // 2**20} MiB")
        return data

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/status")
    def status(authorised: Annotated[bool, Depends(reader)]) -> dict:
        """The station's knowledge and health; its ``config`` only with a token."""
        result = station.status()
        if not authorised:
            result.pop("config", None)
        return result

    image_body = {"requestBody": {"required": True, "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}}}}}

    @app.post("/api/predict", openapi_extra=image_body)
    async def predict(request: Request,
                      top_k: Annotated[int, Query(ge=1, le=50)] = 5,
                      heatmap: bool = False,
                      representatives: Annotated[int, Query(ge=0, le=10)] = 1,
                      enqueue: bool = True) -> JSONResponse:
        """Classify one image: label (null = unknown), confidence, alternatives, representatives, heat map.

        Send the image as the request body (``Content-Type: image/jpeg``, what the camera page does:
        the fast path) or as the ``image`` field of a form."""
        limit = min(MAX_IMAGE_BYTES, max_upload_bytes)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form(max_files=1) as form:
                upload = form.get("image")
                if not isinstance(upload, StarletteUpload):
                    raise HTTPException(422, "the form needs an 'image' file field")
                name, data = upload.filename or "upload", await upload.read(limit + 1)
        else:
            name, body = "body", bytearray()
            async for chunk in request.stream():  # bounded even without a Content-Length
                body += chunk
                if len(body) > limit:
                    break
            data = bytes(body)
        if len(data) > limit:
            raise HTTPException(413, f"{name}: larger than {limit // 2**20} MiB")

        def work() -> dict:
            with decode_slot():
                image = load_image(data, name=name, max_pixels=max_pixels, eight_bit_only=True, fit=fit)
            return station.predict(image, top_k=top_k, heatmap=heatmap, representatives=representatives,
                                   enqueue=enqueue)

        return JSONResponse(await run_in_threadpool(work))

    @app.post("/api/learn")
    def learn(user: Writer,
              files: Annotated[list[UploadFile], File(description="Images, zips of concept folders, or videos.")],
              label: Annotated[str | None, Form(description="Class name or concept path (a/b/c).")] = None,
              kind: Annotated[str, Form(pattern="^(teach|confirm|correct)$")] = "teach",
              predicted: Annotated[str | None, Form(description="What the station had said (feedback).")] = None,
              confidence: Annotated[float | None, Form(ge=0, le=1)] = None,
              every: Annotated[int, Form(ge=1, le=1000, description="Video: keep every n-th frame.")] = 10,
              new_class: Annotated[bool, Form(description="Create the class even if its name is close to a "
                                                          "known one's (else 409 'did you mean ...?').")] = False
              ) -> dict:
        """Teach, confirm or correct: returns once the feedback is committed to the store."""
        budget = Budget(limits.request_pixels, limits.request_images)

        def pairs():  # one upload at a time, its images decoded one at a time as they are learned
            left = max_upload_bytes
            for f in files:
                data = read(f, left)
                left -= len(data)
                if kind_of(f.filename or "", data) == "image" and len(data) > MAX_IMAGE_BYTES:
                    raise HTTPException(413, f"{f.filename}: an image larger than {MAX_IMAGE_BYTES // 2**20} MiB")
                yield from labelled_images(f.filename or "upload", data, label, every=every, max_pixels=max_pixels,
                                           budget=budget, fit=fit)

        result = station.learn_stream(decode_slot.each(pairs()), kind=kind, user=user, predicted=predicted,
                                      confidence=confidence, new_class=new_class)
        return {**result, "learned": len(result["events"])}

    @app.post("/api/consolidate")
    def consolidate(user: Writer) -> dict:
        """Shrink the fast memory (Fuzzy ARTMAP: one representation per class); a new version."""
        return station.consolidate(user)

    @app.get("/api/versions")
    def versions() -> dict:
        return {"active": station.store.active_version, "versions": station.store.versions()}

    @app.post("/api/versions/{version}/rollback")
    def rollback(version: int, user: Writer) -> dict:
        """Return to an earlier version's knowledge (recorded as a new version)."""
        return station.rollback(version, user)

    @app.post("/api/versions/{version}/tag")
    def tag(version: int, user: Writer, name: Annotated[str, Form(description="The tag, e.g. 'before line 3'.")]):
        """Name a version: tagged versions are never pruned."""
        station.store.tag_version(version, name)
        return {"version": version, "tag": name.strip()}

    @app.get("/api/knowledge", response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def export() -> Response:
        """The current knowledge as a package file (no images, no backbone weights)."""
        return Response(station.export(), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="knowledge.edge"'})

    @app.post("/api/knowledge")
    def import_(user: Writer, package: Annotated[UploadFile, File(description="A knowledge package.")]) -> dict:
        """Merge another site's knowledge package (refused if altered or from another backbone)."""
        return station.import_package(read(package, max_upload_bytes), package.filename or "upload", user)

    @app.get("/api/queue")
    def queue(status: Annotated[str, Query(pattern="^(open|labelled|dismissed|expired)$")] = "open",
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
        """Low-confidence predictions waiting for a person (least confident first)."""
        return {"items": station.store.queue(status, limit)}

    @app.post("/api/queue/{item}")
    def label_item(item: int, user: Writer, label: Annotated[str | None, Form()] = None,
                   new_class: Annotated[bool, Form()] = False) -> dict:
        """Label a queued prediction (it is learned), or dismiss it (no label)."""
        return station.label_queue(item, label or None, user, new_class=new_class)

    @app.get("/api/queue/{item}/image", response_class=Response)
    def queue_image(item: int) -> Response:
        image = station.store.queue_item(item)["image"]
        if image is None:
            raise HTTPException(404, "no image kept for this item (start the station with --keep-images)")
        return Response(image, media_type="image/jpeg")

    @app.get("/api/thumbnails/{item}", response_class=Response)
    def thumbnail(item: int) -> Response:
        return Response(station.store.thumbnail(item), media_type="image/jpeg")

    @app.get("/api/concepts")
    def concepts() -> dict:
        return {"concepts": station.store.concepts()}

    @app.get("/api/events")
    def events(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        """The feedback log: who taught or corrected what, when."""
        return {"events": station.store.events(limit)}

    # -- the worker's classes: cards, rename, merge, delete, undo; the token check --------------------------
    @app.exception_handler(NearDuplicateError)
    async def near_duplicate(request: Request, exc: NearDuplicateError):
        return JSONResponse({"detail": str(exc), "suggestion": exc.suggestion}, 409)

    ClassName = Annotated[str, Form(description="A class name or concept path.")]

    @app.get("/api/classes")
    def classes() -> dict:
        """One card per class: examples, thumbnail ids (with --keep-images), and ``few`` (under 5 examples)."""
        return {"classes": station.classes()}

    @app.post("/api/classes/rename")
    def rename_class(user: Writer, name: ClassName, to: ClassName) -> dict:
        """Call a class by another name (409 if that name is taken: merge instead); a new version."""
        return station.rename_class(name, to, user)

    @app.post("/api/classes/merge")
    def merge_classes(user: Writer, name: ClassName, into: ClassName) -> dict:
        """All of ``name``'s examples become ``into``'s; ``name`` is gone. A new version."""
        return station.merge_classes(name, into, user)

    @app.post("/api/classes/delete")
    def delete_class(user: Writer, name: ClassName) -> dict:
        """Forget a class and what was learned from it; a new version (roll back to get it back)."""
        return station.delete_class(name, user)

    @app.post("/api/undo")
    def undo(user: Writer) -> dict:
        """Take back the last teach, confirm, correct or label request (409 when there is nothing to undo)."""
        return station.undo(user)

    @app.get("/api/token")
    def token_access(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> dict:
        """What the token sent gives: ``write``, ``read`` or ``none`` (for a "token OK" check)."""
        return {"access": tokens.who(credentials.credentials if credentials else None)[0] or "none"}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
