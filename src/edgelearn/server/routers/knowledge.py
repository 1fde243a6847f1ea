"""Versions of the knowledge (roll back, tag), its concepts, and packages exchanged with other sites."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from edgelearn.server.deps import MaxUploadBytes, StationDep, Writer
from edgelearn.server.models import ConceptsAnswer, ImportAnswer, KnowledgeAnswer, TagAnswer, VersionsAnswer
from edgelearn.server.size import read_upload

router = APIRouter(prefix="/api", tags=["knowledge"])


@router.get("/versions", response_model=VersionsAnswer)
def versions(station: StationDep) -> dict:
    return {"active": station.store.active_version, "versions": station.store.versions()}


@router.post("/versions/{version}/rollback", response_model=KnowledgeAnswer)
def rollback(version: int, station: StationDep, user: Writer) -> dict:
    """Return to an earlier version's knowledge (recorded as a new version)."""
    return station.rollback(version, user)


@router.post("/versions/{version}/tag", response_model=TagAnswer)
def tag(version: int, station: StationDep, user: Writer,
        name: Annotated[str, Form(description="The tag, e.g. 'before line 3'.")]) -> dict:
    """Name a version: tagged versions are never pruned."""
    station.store.tag_version(version, name)
    return {"version": version, "tag": name.strip()}


@router.get("/knowledge", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def export(station: StationDep) -> Response:
    """The current knowledge as a package file (no images, no backbone weights)."""
    return Response(station.export(), media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="knowledge.edge"'})


@router.post("/knowledge", response_model=ImportAnswer)
def import_(station: StationDep, user: Writer, max_upload_bytes: MaxUploadBytes,
            package: Annotated[UploadFile, File(description="A knowledge package.")]) -> dict:
    """Merge another site's knowledge package (refused if altered or from another backbone)."""
    return station.import_package(read_upload(package, max_upload_bytes), package.filename or "upload", user)


@router.get("/concepts", response_model=ConceptsAnswer)
def concepts(station: StationDep) -> dict:
    return {"concepts": station.store.concepts()}
