"""What endpoints get from the app (``app.state``, set by :func:`edgelearn.server.app.create_app`) through
``Depends``: the station, who is asking, and what one request may cost. Tests override :func:`get_station`
(``app.dependency_overrides``) to run the API over a fake station."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgelearn.server.guard import WRITE, Tokens
from edgelearn.server.limits import DecodeSlots, Limits
from edgelearn.server.station import THUMBNAIL_SIDE, Station

bearer = HTTPBearer(auto_error=False)  # Guard checked the token already; this names it in /docs
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_station(request: Request) -> Station:
    return request.app.state.station


def get_tokens(request: Request) -> Tokens:
    return request.app.state.tokens


def get_limits(request: Request) -> Limits:
    return request.app.state.limits


def get_decode_slot(request: Request) -> DecodeSlots:
    return request.app.state.decode_slot


def get_max_upload_bytes(request: Request) -> int:
    return request.app.state.max_upload_bytes


StationDep = Annotated[Station, Depends(get_station)]
TokensDep = Annotated[Tokens, Depends(get_tokens)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
DecodeSlot = Annotated[DecodeSlots, Depends(get_decode_slot)]
MaxUploadBytes = Annotated[int, Depends(get_max_upload_bytes)]


def writer(request: Request, tokens: TokensDep, credentials: Credentials) -> str | None:
    """Checks the token (Guard did already, before the body); returns who is writing: with ``users``,
    the name whose token it is, else the ``X-User`` header (a free label, for the feedback log)."""
    access, name = tokens.who(credentials.credentials if credentials else None)
    if access != WRITE:
        raise HTTPException(401, "this needs the station's token",
                            headers={"WWW-Authenticate": "Bearer"})
    return name if tokens.users else request.headers.get("x-user") or None


def reader(tokens: TokensDep, credentials: Credentials) -> bool:
    """Whether the request carries a read or write token."""
    return tokens.who(credentials.credentials if credentials else None)[0] is not None


def decode_side(station: StationDep) -> int:
    """Decode big images at about what the network (and a thumbnail) needs, not at full size."""
    return max(station.rec.backbone.preprocessing.resize_size, THUMBNAIL_SIDE)


Writer = Annotated[str | None, Depends(writer)]
Reader = Annotated[bool, Depends(reader)]
DecodeSide = Annotated[int, Depends(decode_side)]
