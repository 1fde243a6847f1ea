"""The worker's classes: cards, rename, merge, delete, undo; and the page's token check."""

from typing import Annotated

from fastapi import APIRouter, Form

from edgelearn.server.deps import Credentials, StationDep, TokensDep, Writer
from edgelearn.server.models import ClassChangeAnswer, ClassesAnswer, TokenAnswer, UndoAnswer

router = APIRouter(prefix="/api", tags=["classes"])
ClassName = Annotated[str, Form(description="A class name or concept path.")]


@router.get("/classes", response_model=ClassesAnswer)
def classes(station: StationDep) -> dict:
    """One card per class: examples, thumbnail ids (with --keep-images), and ``few`` (under 5 examples)."""
    return {"classes": station.classes()}


@router.post("/classes/rename", response_model=ClassChangeAnswer)
def rename_class(station: StationDep, user: Writer, name: ClassName, to: ClassName) -> dict:
    """Call a class by another name (409 if that name is taken: merge instead); a new version."""
    return station.rename_class(name, to, user)


@router.post("/classes/merge", response_model=ClassChangeAnswer)
def merge_classes(station: StationDep, user: Writer, name: ClassName, into: ClassName) -> dict:
    """All of ``name``'s examples become ``into``'s; ``name`` is gone. A new version."""
    return station.merge_classes(name, into, user)


@router.post("/classes/delete", response_model=ClassChangeAnswer)
def delete_class(station: StationDep, user: Writer, name: ClassName) -> dict:
    """Forget a class and what was learned from it; a new version (roll back to get it back)."""
    return station.delete_class(name, user)


@router.post("/undo", response_model=UndoAnswer)
def undo(station: StationDep, user: Writer) -> dict:
    """Take back the last teach, confirm, correct or label request (409 when there is nothing to undo)."""
    return station.undo(user)


@router.get("/token", response_model=TokenAnswer)
def token_access(tokens: TokensDep, credentials: Credentials) -> dict:
    """What the token sent gives: ``write``, ``read`` or ``none`` (for a "token OK" check)."""
    return {"access": tokens.who(credentials.credentials if credentials else None)[0] or "none"}
