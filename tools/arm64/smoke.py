"""ARM64 smoke test of the device install, driven by tools/arm64/smoke.sh.

``device WORK BUNDLE`` runs inside the emulated aarch64 interpreter (qemu): torch must be missing; ``edgelearn
learn``/``predict`` from the bundle; a station on loopback is taught two classes over the API, predicts, and
exports a knowledge package into WORK. ``host WORK BUNDLE`` runs on the workstation: the package, imported onto
the same bundle, must predict what the device did. ``speed BUNDLE...`` times one-at-a-time predictions.

Without binfmt_misc an emulated process cannot start another aarch64 program itself, so the command that runs
the device's Python is given in ``$EDGELEARN_SMOKE_PYTHON`` (default: this interpreter).
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220)}
TEACH = 3  # images per class
PROBE = "blue"


def colour_image(name: str, seed: int, size: int = 48) -> Image.Image:
    """A noisy solid-colour image, as the project's tests make them."""
    noise = np.random.default_rng(seed).integers(-25, 25, size=(size, size, 3))
    return Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8))


def python() -> list[str]:
    return shlex.split(os.environ.get("EDGELEARN_SMOKE_PYTHON", "")) or [sys.executable]


def edgelearn(*args: str, timeout: float = 600) -> str:
    """Run the edgelearn CLI on the device's interpreter; its stdout, or SystemExit with its output."""
    done = subprocess.run([*python(), "-m", "edgelearn", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"FAIL edgelearn {args[0]} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def step(name: str, started: float) -> None:
    print(f"ok   {name} ({time.monotonic() - started:.1f} s)", flush=True)


def write_images(work: Path) -> Path:
    for name in COLOURS:
        (work / "images" / name).mkdir(parents=True, exist_ok=True)
        for i in range(TEACH):
            colour_image(name, i).save(work / "images" / name / f"{name}{i}.png")
    colour_image(PROBE, 99).save(work / "probe.png")
    return work / "images"


def check_no_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        print(f"ok   import torch fails: {e}", flush=True)
    else:
        raise SystemExit("FAIL torch is importable: the device install must not contain it")


def cli_learn_predict(work: Path, images: Path, backbone: list[str]) -> None:
    started = time.monotonic()
    edgelearn("learn", str(images), "--learner", "ncm", "-o", str(work / "cli.edge"), *backbone)
    answer = json.loads(edgelearn("predict", str(work / "cli.edge"), str(work / "probe.png"), "--json",
                                  "--weights", backbone[backbone.index("--weights") + 1]))
    label = answer["predictions"][0]["label"]
    if label != PROBE:
        raise SystemExit(f"FAIL edgelearn predict said {label!r}, not {PROBE!r}: {answer}")
    step(f"edgelearn learn + predict from the bundle: {label}", started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_station(work: Path, backbone: list[str], token: str):
    import httpx

    port = free_port()
    log = open(work / "serve.log", "wb")  # noqa: SIM115 (the station's log, read on failure)
    cmd = [*python(), "-m", "edgelearn", "serve", "--data", str(work / "station"), "--port", str(port), *backbone]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "EDGELEARN_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                          headers={"Authorization": f"Bearer {token}", "X-User": "arm64-smoke"})
    deadline = time.monotonic() + 600  # emulated start-up takes a while
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"FAIL the station exited with {process.returncode}:\n{(work / 'serve.log').read_text()}")
        try:
            if client.get("/api/status").status_code == 200:
                return process, client
        except httpx.TransportError:
            time.sleep(1)
    process.kill()
    raise SystemExit(f"FAIL the station did not answer in 600 s:\n{(work / 'serve.log').read_text()}")


def station_round(work: Path, images: Path, backbone: list[str]) -> None:
    started = time.monotonic()
    process, client = start_station(work, backbone, os.environ.get("EDGELEARN_TOKEN", "arm64-smoke-token-0123"))
    try:
        step("station started on 127.0.0.1", started)
        for name in COLOURS:
            files = [("files", (p.name, p.read_bytes(), "image/png")) for p in sorted((images / name).iterdir())]
            answer = client.post("/api/learn", data={"label": name}, files=files)
            assert answer.status_code == 200, answer.text
        probe = {"image": ("probe.png", (work / "probe.png").read_bytes(), "image/png")}
        predicted = client.post("/api/predict", files=probe).json()
        package = client.get("/api/knowledge")
        assert package.status_code == 200, package.text
        (work / "knowledge.edge").write_bytes(package.content)
        (work / "device.json").write_text(json.dumps(predicted))
        if predicted["label"] != PROBE:
            raise SystemExit(f"FAIL the station said {predicted['label']!r}, not {PROBE!r}")
        step(f"station taught {len(COLOURS)} classes, predicted {predicted['label']}, exported a package", started)
    finally:
        client.close()
        process.terminate()
        process.wait(120)


def device(work: Path, bundle: Path, backbone: list[str]) -> None:
    import platform

    print(f"device: Python {platform.python_version()} on {platform.machine()}", flush=True)
    check_no_torch()
    images = write_images(work)
    cli_learn_predict(work, images, backbone)
    station_round(work, images, backbone)


def host(work: Path, bundle: Path) -> None:
    from edgelearn import Recognizer

    device_answer = json.loads((work / "device.json").read_text())
    recognizer = Recognizer.load(work / "knowledge.edge", weights=bundle, runtime="onnx")
    here = recognizer.predict([Image.open(work / "probe.png").convert("RGB")])[0]
    if here.label != device_answer["label"]:
        raise SystemExit(f"FAIL the imported package says {here.label!r} here, the device said "
                         f"{device_answer['label']!r}")
    print(f"ok   package imported on {os.uname().machine}: {here.label} (confidence {here.confidence:.3f} here, "
          f"{device_answer['confidence']:.3f} on the device)", flush=True)


def speed(bundles: list[Path], frames: int = 20) -> None:
    """What ``edgelearn predict`` does per image (embed + learner), one at a time: frames/s here."""
    import platform

    from edgelearn import Recognizer
    from edgelearn.backbones import build_backbone
    from edgelearn.learners import make_learner

    images = [colour_image(name, i, 256) for i in range(frames // 2) for name in COLOURS]
    for path in bundles:
        recognizer = Recognizer(build_backbone("mobilenet_v2", weights=path), make_learner("ncm"))
        recognizer.learn(images[:4], [*COLOURS] * 2)  # also the warm-up
        started = time.monotonic()
        for image in images:
            recognizer.predict([image])
        rate, size = len(images) / (time.monotonic() - started), recognizer.backbone.preprocessing.input_size
        print(f"speed {path.name} at {size} px on {platform.machine()}: {rate:.2f} frames/s "
              f"({len(images)} images, one at a time)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["device", "host", "speed"])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--input-size", default="64")
    args = parser.parse_args()
    if args.mode == "speed":
        return speed(args.paths)
    work, bundle = args.paths
    if args.mode == "host":
        return host(work, bundle)
    device(work, bundle, ["--backbone", args.backbone, "--weights", str(bundle), "--input-size", args.input_size])


if __name__ == "__main__":
    main()
