"""The labelling queue: low-confidence predictions waiting for a person."""

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import Response

from edgelearn.server.deps import StationDep, Writer
from edgelearn.server.models import LabelAnswer, QueueAnswer

router = APIRouter(prefix="/api", tags=["queue"])


@router.get("/queue", response_model=QueueAnswer)
def queue(station: StationDep,
          status: Annotated[str, Query(pattern="^(open|labelled|dismissed|expired)$")] = "open",
          limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
    """Low-confidence predictions waiting for a person (least confident first)."""
    return {"items": station.store.queue(status, limit)}


@router.post("/queue/{item}", response_model=LabelAnswer, response_model_exclude_unset=True)
def label_item(item: int, station: StationDep, user: Writer, label: Annotated[str | None, Form()] = None,
               new_class: Annotated[bool, Form()] = False) -> dict:
    """Label a queued prediction (it is learned), or dismiss it (no label)."""
    return station.label_queue(item, label or None, user, new_class=new_class)


@router.get("/queue/{item}/image", response_class=Response)
def queue_image(item: int, station: StationDep) -> Response:
    image = station.store.queue_item(item)["image"]
    if image is None:
        raise HTTPException(404, "no image was kept for this item (the station keeps images only when started to)")
    return Response(image, media_type="image/jpeg")
