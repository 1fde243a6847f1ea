"""Teach, confirm, correct; consolidate what was learned."""

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from edgelearn.server.deps import DecodeSide, DecodeSlot, LimitsDep, MaxUploadBytes, StationDep, Writer
from edgelearn.server.limits import Budget
from edgelearn.server.models import KnowledgeAnswer, LearnAnswer
from edgelearn.server.size import MAX_IMAGE_BYTES, read_upload
from edgelearn.server.uploads import kind_of, labelled_images

router = APIRouter(prefix="/api", tags=["learn"])


@router.post("/learn", response_model=LearnAnswer)
def learn(station: StationDep, user: Writer, limits: LimitsDep, decode_slot: DecodeSlot, fit: DecodeSide,
          max_upload_bytes: MaxUploadBytes,
          files: Annotated[list[UploadFile], File(description="Images, zips of concept folders, or videos.")],
          label: Annotated[str | None, Form(description="Class name or concept path (a/b/c).")] = None,
          kind: Annotated[str, Form(pattern="^(teach|confirm|correct)$")] = "teach",
          predicted: Annotated[str | None, Form(description="What the station had said (feedback).")] = None,
          confidence: Annotated[float | None, Form(ge=0, le=1)] = None,
          every: Annotated[int, Form(ge=1, le=1000, description="Video: keep every n-th frame.")] = 10,
          new_class: Annotated[bool, Form(description="Create the class even if its name is close to a known "
                                                      "one's (else 409 'did you mean ...?').")] = False) -> dict:
    """Teach, confirm or correct: returns once the feedback is committed to the store."""
    budget = Budget(limits.request_pixels, limits.request_images)

    def pairs():  # one upload at a time, its images decoded one at a time as they are learned
        left = max_upload_bytes
        for f in files:
            data = read_upload(f, left)
            left -= len(data)
            if kind_of(f.filename or "", data) == "image" and len(data) > MAX_IMAGE_BYTES:
                raise HTTPException(413, f"{f.filename}: an image larger than {MAX_IMAGE_BYTES // 2**20} MiB")
            yield from labelled_images(f.filename or "upload", data, label, every=every,
                                       max_pixels=limits.image_pixels, budget=budget, fit=fit)

    result = station.learn_stream(decode_slot.each(pairs()), kind=kind, user=user, predicted=predicted,
                                  confidence=confidence, new_class=new_class)
    return {**result, "learned": len(result["events"])}


@router.post("/consolidate", response_model=KnowledgeAnswer)
def consolidate(station: StationDep, user: Writer) -> dict:
    """Shrink the fast memory (Fuzzy ARTMAP: one representation per class); a new version."""
    return station.consolidate(user)
