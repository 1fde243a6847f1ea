"""Running a detector on pictures and videos, in PyTorch or ONNX Runtime (Mottakin's thesis: ONNX for
real-time inference), and exporting it to ONNX.

The ONNX file holds the whole network (trunk, neck, head: image -> raw scores and box offsets) and
the detector's manifest in its metadata; decoding (anchors, non-maximum suppression) stays in
torchvision on both runtimes, so both give the same boxes.
"""

import functools
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from edgelearn.backbones.preprocessing import unit_square
from edgelearn.data.frames import VIDEO_SUFFIXES, read_frames
from edgelearn.data.images import IMAGE_SUFFIXES, load_image
from edgelearn.detection.models import Detector, _trunk, load_detector, read_thresholds
from edgelearn.detection.thresholds import DEFAULT_THRESHOLD
from edgelearn.errors import EdgelearnError, ModelFileError
from edgelearn.files import atomic_write_bytes
from edgelearn.runtime import Runtime, load_runner
from edgelearn.runtime.onnx import export_onnx

META_KEY = "edgelearn-detector"


@dataclass(frozen=True)
class Found:
    """One detected object: class name, score, box (x1, y1, x2, y2) in the picture's pixels."""
    name: str
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict:
        return {"class": self.name, "score": round(self.score, 4), "box": [round(v, 1) for v in self.box]}


class DetectorRunner:
    """A saved detector ready to find objects: ``.safetensors`` runs in PyTorch, ``.onnx`` in ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        path = Path(path)
        self.runtime, self.runner = Runtime.TORCH, None
        if not path.is_file():
            raise ModelFileError(f"{path}: no such detector file")
        if path.suffix == ".onnx":
            self.runner, self.runtime = load_runner(path, threads), Runtime.ONNX
            manifest = onnx_manifest(path)
            meta = {k: manifest[k] for k in ("padding", "mean", "std") if k in manifest}
            # decoding needs only anchors and box coder: a detector skeleton with an untrained trunk
            self.detector = Detector(manifest["arch"], manifest["classes"], manifest["size"], _trunk(meta)[0], meta)
            self.detector.thresholds = read_thresholds(manifest, path)
        else:
            self.detector = load_detector(path)
        self.detector.eval()

    @classmethod
    def of(cls, detector: Detector) -> "DetectorRunner":
        """A runner of a detector in memory (PyTorch)."""
        runner = cls.__new__(cls)
        runner.detector, runner.runtime, runner.runner = detector.eval(), Runtime.TORCH, None
        return runner

    @property
    def classes(self) -> list[str]:
        return self.detector.classes

    @property
    def size(self) -> int:
        return self.detector.size

    def raw(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, size, size) in [0, 1] -> raw class scores and box offsets."""
        if self.runner is not None:
            return self.runner.run(batch)
        with torch.no_grad():
            return self.detector(batch)

    def prepare(self, pictures: list[Image.Image]) -> torch.Tensor:
        to_input = unit_square(self.size)
        return torch.stack([to_input(p.convert("RGB")) for p in pictures])

    def detect(self, pictures: list[Image.Image], threshold: float | None = None) -> list[list[Found]]:
        """The objects in each picture scoring at least ``threshold`` (by default its class's threshold
        chosen in training, else 0.5), boxes in the picture's pixels."""
        found = self.detector.decode(*self.raw(self.prepare(pictures)), [(p.height, p.width) for p in pictures])
        lowest = [threshold if threshold is not None else self.detector.thresholds.get(c, DEFAULT_THRESHOLD)
                  for c in self.classes]
        return [[Found(self.classes[int(k) - 1], float(s), tuple(float(v) for v in b))
                 for b, s, k in zip(f["boxes"], f["scores"], f["labels"], strict=True) if s >= lowest[int(k) - 1]]
                for f in found]


def draw(picture: Image.Image, objects: list[Found]) -> Image.Image:
    """The picture with each object's box and 'class score' label, both sized to the picture so they
    stay readable on a 4000-pixel camera frame and do not swamp a 200-pixel crop."""
    drawn = picture.convert("RGB")  # a copy: the caller's picture stays as it was
    pen = ImageDraw.Draw(drawn)
    font, width = label_font(drawn.size), max(2, round(min(drawn.size) / 500))
    for o in objects:
        pen.rectangle(o.box, outline="red", width=width)
        text, corner = f"{o.name} {o.score:.2f}", (o.box[0], o.box[1])
        # above the box's top-left corner, or inside the box where it touches the picture's top
        anchor = "lb" if pen.textbbox(corner, text, font=font, anchor="lb")[1] >= 0 else "lt"
        left, top, right, bottom = pen.textbbox(corner, text, font=font, anchor=anchor)
        pen.rectangle((left - width, top - width, right + width, bottom + width), fill="red")
        pen.text(corner, text, font=font, fill="white", anchor=anchor)
    return drawn


@functools.lru_cache(maxsize=8)
def label_font(size: tuple[int, int]) -> ImageFont.FreeTypeFont:
    """Pillow's own scalable font at 2.5 % of the picture's shorter side (at least 11 px)."""
    return ImageFont.load_default(size=max(11, round(0.025 * min(size))))


def detect_paths(runner: DetectorRunner, paths: list[Path], *, threshold: float | None = None,
                 output: Path | None = None, every: int = 1) -> list[dict]:
    """Detect in pictures, folders of pictures and videos (every ``every``-th frame). With ``output``
    (a folder), each picture is also written with its boxes drawn, each video as an .mp4 of drawn frames
    (named as :func:`drawing_names` says; each entry's ``drawing`` is its file).
    Returns one entry per picture or frame: source, frame (videos), objects."""
    results = []
    files = _expand(paths)
    names = drawing_names(files)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            results += _detect_video(runner, path, threshold, output and output / f"{names[path]}.mp4", every)
            continue
        picture = load_image(path)
        objects = runner.detect([picture], threshold)[0]
        results.append({"source": str(path), "objects": [o.as_dict() for o in objects]})
        if output is not None:
            draw(picture, objects).save(output / f"{names[path]}.png")
            results[-1]["drawing"] = str(output / f"{names[path]}.png")
    return results


def drawing_names(paths: list[Path]) -> dict[Path, str]:
    """A drawing's file name (without suffix) per input: its stem, and where inputs share a stem
    (a/x.jpg and b/x.jpg, x.jpg and x.png) a short hash of its full path too, so none overwrites
    another and the same input gets the same name in every run."""
    stems = Counter(p.stem for p in dict.fromkeys(paths))
    return {p: p.stem if stems[p.stem] == 1 else f"{p.stem}-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]}"
            for p in paths}


def _expand(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not found:
                raise EdgelearnError(f"{path}: no pictures or videos in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise EdgelearnError(f"{path}: no such file or folder")
    return files


def _detect_video(runner: DetectorRunner, path: Path, threshold: float | None, drawing: Path | None,
                  every: int) -> list:
    import cv2

    results, writer = [], None
    try:
        for k, frame in enumerate(read_frames(path, every=every)):
            objects = runner.detect([frame], threshold)[0]
            results.append({"source": str(path), "frame": k * every, "objects": [o.as_dict() for o in objects]})
            if drawing is not None:
                results[-1]["drawing"] = str(drawing)
                if writer is None:
                    writer = cv2.VideoWriter(str(drawing), cv2.VideoWriter_fourcc(*"mp4v"),
                                             25 / every, frame.size)
                writer.write(cv2.cvtColor(np.asarray(draw(frame, objects)), cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
    return results


def export_detector(model: str | os.PathLike, output: str | os.PathLike, *, check: int = 8, seed: int = 0) -> dict:
    """Export a detector to ONNX (its manifest in the metadata) and check it against PyTorch on ``check``
    random images: the largest raw difference and whether the decoded boxes agree."""
    import onnx

    detector = load_detector(model)
    output = Path(output)
    if output.suffix != ".onnx":
        raise EdgelearnError(f"{output}: a detector exports to a .onnx file")
    export_onnx(_Raw(detector).eval(), detector.size, output)
    proto = onnx.load(str(output))
    manifest = {"arch": detector.arch, "classes": detector.classes, "size": detector.size, **detector.meta,
                "thresholds": detector.thresholds}
    proto.metadata_props.add(key=META_KEY, value=json.dumps(manifest))
    atomic_write_bytes(output, proto.SerializeToString())
    return {"output": str(output), "bytes": output.stat().st_size, **agreement(detector, output, check, seed)}


class _Raw(torch.nn.Module):
    """The detector's forward under a plain name for the exporter (image -> scores, offsets)."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor):
        return self.detector(image)


def agreement(detector: Detector, onnx_path: Path, images: int, seed: int) -> dict:
    """PyTorch vs ONNX Runtime on random images: raw outputs, decoded boxes and milliseconds per image."""
    batch = torch.rand(images, 3, detector.size, detector.size, generator=torch.Generator().manual_seed(seed))
    onnx, torch_runner = DetectorRunner(onnx_path), DetectorRunner.of(detector)
    ours, theirs = torch_runner.raw(batch), onnx.raw(batch)
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    mine, other = detector.decode(*ours), detector.decode(*theirs)
    same = sum(torch.equal(a["labels"], b["labels"]) and bool(torch.allclose(a["boxes"], b["boxes"], atol=0.5))
               for a, b in zip(mine, other, strict=True))
    one = batch[:1]
    return {"checked_images": images, "max_abs_difference": diff, "same_detections": same / images,
            "ms_per_image": frame_time(lambda: onnx.raw(one)), "torch_ms_per_image": frame_time(
                lambda: torch_runner.raw(one))}


def frame_time(call, repeats: int = 20) -> float:
    """Median milliseconds of ``call()`` after two warm-up calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def onnx_manifest(path: Path) -> dict:
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[META_KEY])
    except KeyError:
        raise ModelFileError(f"{path}: an ONNX file, but not an exported edgelearn detector") from None
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc})") from exc
