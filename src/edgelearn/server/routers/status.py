"""The station's state and health, and its feedback log."""

from typing import Annotated

from fastapi import APIRouter, Query

from edgelearn.server.deps import Reader, StationDep
from edgelearn.server.models import EventsAnswer, StatusAnswer

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/status", response_model=StatusAnswer, response_model_exclude_unset=True)
def status(station: StationDep, authorised: Reader) -> dict:
    """The station's knowledge and health; its ``config`` only with a token."""
    result = station.status()
    if not authorised:
        result.pop("config", None)
    return result


@router.get("/events", response_model=EventsAnswer)
def events(station: StationDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    """The feedback log: who taught or corrected what, when."""
    return {"events": station.store.events(limit)}
