"""The station's fixed camera (``serve --camera``): its latest decision and frame, and a trigger."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from edgelearn.errors import NotFoundError
from edgelearn.server.camera import Camera
from edgelearn.server.deps import Writer
from edgelearn.server.models import CameraAnswer, DecisionAnswer

router = APIRouter(prefix="/api", tags=["camera"])


def get_camera(request: Request) -> Camera:
    camera = request.app.state.camera
    if camera is None:
        raise NotFoundError("no camera on this station (start it with --camera)")
    return camera


CameraDep = Annotated[Camera, Depends(get_camera)]


@router.get("/camera", response_model=CameraAnswer)
def camera_state(camera: CameraDep) -> dict:
    """The latest decision (null before the first), the frames read, decided and dropped, and the source."""
    latest = camera.watcher.latest
    return {"source": camera.source, "stats": camera.watcher.stats,
            "frame_id": latest.frame.frame_id if latest.frame else None,
            "decision": latest.decision.to_dict() if latest.decision else None}


@router.get("/camera/frame", response_class=Response)
def camera_frame(camera: CameraDep) -> Response:
    """The latest frame as JPEG (404 before the first); ``X-Frame-Id`` says which."""
    frame_id, data = camera.frame_jpeg()
    return Response(data, media_type="image/jpeg", headers={"X-Frame-Id": str(frame_id), "Cache-Control": "no-store"})


@router.post("/camera/trigger", response_model=DecisionAnswer)
def camera_trigger(user: Writer, camera: CameraDep) -> dict:
    """Decide on the latest frame now and send the decision on, as an MQTT or OPC UA trigger does (409 before
    the first frame)."""
    return camera.trigger().to_dict()
