"""Recognise an image; the thumbnails shown as representatives."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload

from edgelearn.data.images import load_image
from edgelearn.server.deps import DecodeSide, DecodeSlot, LimitsDep, MaxUploadBytes, StationDep
from edgelearn.server.models import PredictAnswer
from edgelearn.server.size import MAX_IMAGE_BYTES

router = APIRouter(prefix="/api", tags=["recognize"])

IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}}}}}


@router.post("/predict", openapi_extra=IMAGE_BODY, response_model=PredictAnswer, response_model_exclude_unset=True)
async def predict(request: Request, station: StationDep, limits: LimitsDep, decode_slot: DecodeSlot, fit: DecodeSide,
                  max_upload_bytes: MaxUploadBytes,
                  top_k: Annotated[int, Query(ge=1, le=50)] = 5,
                  heatmap: bool = False,
                  representatives: Annotated[int, Query(ge=0, le=10)] = 1,
                  enqueue: bool = True) -> dict:
    """Classify one image: label (null = unknown), confidence, alternatives, representatives, heat map.

    Send the image as the request body (``Content-Type: image/jpeg``, what the camera page does:
    the fast path) or as the ``image`` field of a form."""
    limit = min(MAX_IMAGE_BYTES, max_upload_bytes)
    name, data = await _image_bytes(request, limit)

    def work() -> dict:
        with decode_slot():
            image = load_image(data, name=name, max_pixels=limits.image_pixels, eight_bit_only=True, fit=fit)
        return station.predict(image, top_k=top_k, heatmap=heatmap, representatives=representatives,
                               enqueue=enqueue)

    return await run_in_threadpool(work)


async def _image_bytes(request: Request, limit: int) -> tuple[str, bytes]:
    """The image's name and bytes, from a form's ``image`` field or the raw body; 413 over ``limit``."""
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
    return name, data


@router.get("/thumbnails/{item}", response_class=Response)
def thumbnail(item: int, station: StationDep) -> Response:
    return Response(station.store.thumbnail(item), media_type="image/jpeg")
