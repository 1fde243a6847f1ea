"""How large a request body may be: per route, checked before and while the body arrives."""

from fastapi import HTTPException, UploadFile
from fastapi.responses import JSONResponse

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
        too_large = f"this request is larger than {size_text(limit)}"
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


def size_text(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 2**10} KiB"


def read_upload(upload: UploadFile, limit: int) -> bytes:
    """An uploaded file's bytes; 413 if it holds more than ``limit``."""
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{upload.filename}: larger than {limit // 2**20} MiB")
    return data
