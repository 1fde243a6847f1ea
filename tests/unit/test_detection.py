"""Detection: VOC folders, SSD augmentation, detectors, new classes with distillation, ONNX, CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from edgelearn.cli import app
from edgelearn.detection import Detector, VOCDataset, build_detector, load_detector, parse_annotation
from edgelearn.detection.augment import resize, ssd_augmentation
from edgelearn.detection.evaluate import evaluate
from edgelearn.detection.train import distillation_terms, exemplar_indices, picture_keys, train_detector, trunk_maps
from edgelearn.errors import DatasetError, EdgelearnError

SIZE = 128
SHAPES = {"square": ((220, 40, 40), 1.0), "bar": ((40, 60, 230), 3.0)}  # colour, width / height


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


def make_voc(root: Path, n: int = 8, classes=("square", "bar"), seed: int = 0, size: int = 96) -> Path:
    """``n`` noisy grey pictures, each with one coloured rectangle per class of ``classes``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        pixels = rng.integers(90, 140, size=(size, size, 3)).astype(np.uint8)
        objects = []
        for k, name in enumerate(classes):
            colour, aspect = SHAPES[name]
            h = int(rng.integers(18, 26))
            w = min(int(h * aspect), size - 2)
            y = int(rng.integers(0, size // 2 - h)) + k * size // 2  # one half of the picture per class
            x = int(rng.integers(0, size - w))
            pixels[y:y + h, x:x + w] = colour
            objects.append((name, (x + 1, y + 1, x + w, y + h)))  # VOC: 1-based, inclusive
        Image.fromarray(pixels).save(root / "images" / f"p{i}.png")
        (root / "annotations" / f"p{i}.xml").write_text(voc_xml(f"p{i}.png", size, size, objects))
    return root


@pytest.fixture
def voc(tmp_path) -> Path:
    return make_voc(tmp_path / "voc")


def tiny(classes, arch="ssdlite", seed=0):
    return build_detector(list(classes), arch=arch, size=SIZE, weights="random", seed=seed)


def calibrated(classes, root: Path, arch="ssdlite") -> Detector:
    """A tiny detector whose random trunk has batch-norm statistics from ``root``'s pictures (AdaBN):
    with a fresh layer's (mean 0, variance 1) its maps shrink to ~1e-9 and show nothing."""
    det = tiny(classes, arch)
    ds = VOCDataset(root, transforms=resize(SIZE))
    for m in det.trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
    nn.Module.train(det.trunk, True)  # past Trunk.train, which keeps it frozen
    with torch.no_grad():
        det.trunk(torch.stack([ds[i][0] for i in range(len(ds))]))
    det.trunk.eval()
    return det


def test_voc_folder_reads_boxes_zero_based_and_labels_in_class_order(voc):
    ds = VOCDataset(voc)
    assert ds.classes == ["bar", "square"]
    image, target = ds[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
    a = parse_annotation(voc / "annotations" / "p0.xml", voc / "images")
    first = a.boxes[a.names.index("square")]
    assert first[0] == int(first[0]) and target["labels"].tolist() == [2, 1]  # square, bar in file order
    assert torch.equal(target["boxes"][0], torch.tensor(first))


@pytest.mark.parametrize("text, problem", [
    ("<annotation><size>", "not valid XML"),
    ("<annotation><object><name>x</name></object></annotation>", "not a Pascal VOC annotation"),
    (voc_xml("p0.png", 96, 96, [("square", (50, 10, 40, 30))]), "empty box"),
])
def test_bad_annotation_is_an_error_naming_the_file(voc, text, problem):
    bad = voc / "annotations" / "p3.xml"
    bad.write_text(text)
    with pytest.raises(DatasetError, match=rf"p3\.xml.*{problem}"):
        VOCDataset(voc)


def test_annotation_without_its_image_and_unknown_classes_are_refused(voc):
    (voc / "images" / "p2.png").unlink()
    with pytest.raises(DatasetError, match=r"p2\.xml: its image p2\.png is not in"):
        VOCDataset(voc)
    with pytest.raises(DatasetError, match="not a VOC folder"):
        VOCDataset(voc / "images")


def test_unknown_classes_are_refused_or_dropped(voc):
    with pytest.raises(DatasetError, match="classes square are not among bar"):
        VOCDataset(voc, classes=["bar"])
    ds = VOCDataset(voc, classes=["bar"], ignore_other_classes=True)
    assert ds[0][1]["labels"].tolist() == [1]


def test_ssd_augmentation_keeps_every_box_inside_the_image(voc):
    torch.manual_seed(0)
    ds = VOCDataset(voc, transforms=ssd_augmentation(SIZE))
    kept = 0
    for _ in range(5):
        for i in range(len(ds)):
            image, target = ds[i]
            boxes = target["boxes"]
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            assert len(boxes) == len(target["labels"])
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= SIZE).all()
            assert (boxes[:, 2:] > boxes[:, :2]).all()
            kept += len(boxes)
    assert kept > 0


def test_resize_scales_boxes_with_the_image(voc):
    ds = VOCDataset(voc)
    original = ds[0][1]["boxes"].clone()
    ds.transforms = resize(SIZE)
    assert torch.allclose(ds[0][1]["boxes"], original * SIZE / 96, atol=1e-4)


@pytest.mark.parametrize("arch", ["ssdlite", "retinanet"])
def test_extension_copies_every_old_weight_exactly(arch):
    old = tiny(["a", "b"], arch)
    new = old.extended(["c"])
    assert new.classes == ["a", "b", "c"]
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        (old_cls, old_box), (new_cls, new_box) = old.eval()(x), new.eval()(x)
    assert new_cls.shape[-1] == 4 and torch.equal(new_cls[..., :3], old_cls) and torch.equal(new_box, old_box)
    assert not torch.equal(new_cls[..., 3], new_cls[..., 2])  # the new column is its own


def test_distillation_is_zero_when_the_new_model_agrees_on_old_classes():
    old = tiny(["a", "b"]).eval()
    new = old.extended(["c"]).eval()
    maps = old.trunk(torch.rand(2, 3, SIZE, SIZE))
    with torch.no_grad():
        teacher, student = old.head_outputs(*maps), new.head_outputs(*maps)
        assert float(distillation_terms(student, teacher, 3, "ssdlite")) == 0.0
        student["cls_logits"][..., 3] += 5.0  # the new class's scores are free
        assert float(distillation_terms(student, teacher, 3, "ssdlite")) == 0.0
        student["cls_logits"][..., 1] += 1.0  # one old column of three moved by 1: MSE 1/3
        assert float(distillation_terms(student, teacher, 3, "ssdlite")) == pytest.approx(1 / 3)
        teacher["cls_logits"][0, 0, 1] = 50.0  # where the old detector is sure of a class, boxes are kept too
        student["bbox_regression"] += 0.5
        assert float(distillation_terms(student, teacher, 3, "ssdlite")) > 1 / 3 + 0.4


def test_saved_detector_loads_exactly_and_tampering_is_refused(tmp_path):
    det = tiny(["a", "b"], "retinanet")
    path = det.save(tmp_path / "d.safetensors")
    back = load_detector(path)
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(det.eval()(x), back(x), strict=True))
    assert back.classes == ["a", "b"] and back.arch == "retinanet"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(Exception, match="d.safetensors"):
        load_detector(path)


def test_cached_maps_are_found_by_picture_and_renumbered_for_a_detector(voc, tmp_path):
    det = tiny(["bar", "square"])
    cache = trunk_maps(det, VOCDataset(voc), views=2)
    assert cache.c4.shape[:2] == (2, 8) and cache.targets[0][0]["labels"].tolist() == [2, 1]
    part = make_voc(tmp_path / "part", n=0)  # an empty folder of links to two of the pictures
    for name in ("p5", "p2"):
        (part / "images" / f"{name}.png").symlink_to(voc / "images" / f"{name}.png")
        (part / "annotations" / f"{name}.xml").symlink_to(voc / "annotations" / f"{name}.xml")
    squares = VOCDataset(part, classes=["square"], ignore_other_classes=True)
    chosen = cache.select(picture_keys(squares), ["square"])
    assert torch.equal(chosen.c4, cache.c4[:, [2, 5]])  # sorted file names: p2, p5
    assert [t["labels"].tolist() for t in chosen.targets[0]] == [[1], [1]]
    assert torch.equal(chosen.targets[1][0]["boxes"], cache.targets[1][2]["boxes"][:1])
    with pytest.raises(EdgelearnError, match="no cached trunk maps"):
        cache.select(["elsewhere.png"], ["square"])


def test_exemplars_are_bounded_per_class(voc):
    ds = VOCDataset(voc)
    chosen = exemplar_indices(ds, ["bar", "square"], per_class=2, seed=0)
    assert 2 <= len(chosen) <= 4 and len(set(chosen)) == len(chosen)


@pytest.fixture(scope="module")
def overfitted(tmp_path_factory):
    """A tiny detector trained on eight generated pictures (random trunk, so only the neck and head learn)."""
    root = make_voc(tmp_path_factory.mktemp("fit") / "voc", n=12)
    out = root.parent / "det.safetensors"
    result = train_detector(root, out, start_from=calibrated(["bar", "square"], root), epochs=40, lr=3e-3,
                            batch_size=4, views=2, val_fraction=0.2, log=lambda line: None)
    return root, out, result


def test_a_tiny_detector_overfits_generated_rectangles(overfitted):
    root, out, result = overfitted
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0]
    scores = evaluate(load_detector(out), root)
    assert scores["map_50"] > 0.6, scores
    assert set(scores["ap_50"]) == {"bar", "square"}


def test_onnx_export_agrees_with_torch(overfitted, tmp_path):
    from edgelearn.detection.infer import DetectorRunner, export_detector

    _, model, _ = overfitted
    result = export_detector(model, tmp_path / "d.onnx", check=4)
    assert result["max_abs_difference"] < 1e-3 and result["same_detections"] == 1.0
    picture = Image.open(next((overfitted[0] / "images").iterdir()))
    torch_found = DetectorRunner(model).detect([picture], 0.3)[0]
    onnx_found = DetectorRunner(tmp_path / "d.onnx").detect([picture], 0.3)[0]
    assert [f.name for f in torch_found] == [f.name for f in onnx_found]
    assert np.allclose([f.box for f in torch_found], [f.box for f in onnx_found], atol=0.5)


def test_a_new_class_with_distillation_keeps_the_old_scores_that_fine_tuning_loses(tmp_path):
    old_root = make_voc(tmp_path / "old", n=8, classes=("square",))
    new_root = make_voc(tmp_path / "new", n=8, classes=("bar",), seed=1)
    quiet = {"epochs": 10, "lr": 3e-3, "batch_size": 4, "val_fraction": 0.25, "log": lambda line: None}
    old_path = tmp_path / "old.safetensors"
    train_detector(old_root, old_path, start_from=calibrated(["square"], old_root), **quiet)
    old = load_detector(old_path)
    pictures = torch.stack([VOCDataset(old_root, transforms=resize(SIZE))[i][0] for i in range(8)])
    with torch.no_grad():
        before = old(pictures)[0]
    drift = {}
    for name, extra in {"fine-tune": {}, "distill": {"distill": True, "exemplars": old_root, "per_class": 2}}.items():
        result = train_detector(new_root, tmp_path / f"{name}.safetensors", start_from=old_path, **extra, **quiet)
        assert result["classes"] == ["square", "bar"] and result["new_classes"] == ["bar"]
        with torch.no_grad():
            after = load_detector(tmp_path / f"{name}.safetensors")(pictures)[0]
        drift[name] = float((after[..., :2] - before).abs().mean())
    assert result["images"] == 8 + 2  # the new pictures and two exemplars of the old class
    assert drift["distill"] < 0.5 * drift["fine-tune"], drift


def test_cli_trains_evaluates_exports_and_detects(overfitted, tmp_path):
    root, model, _ = overfitted
    runner = CliRunner()
    ev = runner.invoke(app, ["detector", "evaluate", str(model), str(root), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["map_50"] > 0.6
    drawn = tmp_path / "drawn"
    det = runner.invoke(app, ["detect", str(model), str(root / "images" / "p0.png"), "--json", "-o", str(drawn),
                              "--threshold", "0.3"])
    assert det.exit_code == 0, det.output
    found = json.loads(det.stdout)["detections"][0]["objects"]
    assert {o["class"] for o in found} >= {"square", "bar"}
    assert (drawn / "p0.png").is_file()
    session = runner.invoke(app, ["detector", "train", str(make_voc(tmp_path / "more", n=6, seed=2)), "--from",
                                  str(model), "-o", str(tmp_path / "session.safetensors"), "--epochs", "1",
                                  "--json"])  # an online session: new pictures of known classes
    assert session.exit_code == 0, session.output
    assert json.loads(session.stdout)["classes"] == ["bar", "square"] and json.loads(session.stdout)["images"] == 6
    onnx = runner.invoke(app, ["detector", "export", str(tmp_path / "session.safetensors"), "-o",
                               str(tmp_path / "d.onnx")])
    assert onnx.exit_code == 0 and (tmp_path / "d.onnx").is_file(), onnx.output
    again = runner.invoke(app, ["detect", str(tmp_path / "d.onnx"), str(root / "images"), "--json"])
    assert again.exit_code == 0 and len(json.loads(again.stdout)["detections"]) == 12


def test_detection_in_a_video_gives_every_frame_and_a_drawn_video(overfitted, tmp_path):
    import cv2

    from edgelearn.data.frames import read_frames
    from edgelearn.detection.infer import DetectorRunner, detect_paths

    root, model, _ = overfitted
    video = tmp_path / "line.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 96))
    for i in range(6):
        writer.write(cv2.imread(str(root / "images" / f"p{i}.png")))
    writer.release()
    runner = DetectorRunner(model)
    results = detect_paths(runner, [video], threshold=0.2, output=tmp_path / "out", every=2)
    assert [r["frame"] for r in results] == [0, 2, 4]
    frames = list(read_frames(video, every=2))  # what the decoder gives: mp4 is lossy
    assert [r["objects"] for r in results] == [[o.as_dict() for o in runner.detect([frame], threshold=0.2)[0]]
                                               for frame in frames]
    assert (tmp_path / "out" / "line.mp4").stat().st_size > 0
    with pytest.raises(EdgelearnError, match="no pictures or videos in this folder"):
        detect_paths(DetectorRunner(model), [root])  # the VOC folder, not its images/


def test_cli_errors_are_one_line(voc, tmp_path):
    runner = CliRunner()
    (voc / "annotations" / "p1.xml").write_text("<oops")
    bad = runner.invoke(app, ["detector", "train", str(voc), "-o", str(tmp_path / "d.safetensors"),
                              "--weights", "random"])
    assert bad.exit_code == 1 and "p1.xml: not valid XML" in bad.stderr
    missing = runner.invoke(app, ["detect", str(tmp_path / "none.safetensors"), str(voc)])
    assert missing.exit_code == 1 and "no such detector file" in missing.stderr
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    fake = runner.invoke(app, ["detect", str(tmp_path / "fake.onnx"), str(voc)])
    assert fake.exit_code == 1 and "fake.onnx: not a model ONNX Runtime can run" in fake.stderr
    arch = runner.invoke(app, ["detector", "train", str(make_voc(tmp_path / "ok")), "--arch", "yolo",
                               "--weights", "random"])
    assert arch.exit_code == 2 and "yolo" in arch.stderr and "ssdlite" in arch.stderr  # a usage error


def test_drawings_of_inputs_that_share_a_name_do_not_overwrite_each_other(overfitted, tmp_path):
    from edgelearn.detection.infer import DetectorRunner, detect_paths

    root, model, _ = overfitted
    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "x.jpg", tmp_path / "a" / "y.png"]
    for i, path in enumerate(inputs):
        path.parent.mkdir(exist_ok=True)
        Image.open(root / "images" / f"p{i}.png").save(path)
    runner = DetectorRunner(model)
    results = detect_paths(runner, inputs, threshold=0.2, output=tmp_path / "out")
    drawings = [Path(r["drawing"]) for r in results]
    assert len(set(drawings)) == 4 and sorted(drawings) == sorted((tmp_path / "out").iterdir())
    assert drawings[3].name == "y.png"  # a name of its own keeps it
    again = detect_paths(runner, list(reversed(inputs)), threshold=0.2, output=tmp_path / "out")
    assert [Path(r["drawing"]) for r in again] == list(reversed(drawings))  # the same names in every run


def test_labels_on_a_large_picture_are_readable_and_the_picture_is_left_alone():
    from PIL import ImageDraw

    from edgelearn.detection.infer import Found, draw, label_font

    picture = Image.new("RGB", (3000, 2000), "gray")
    drawn = np.asarray(draw(picture, [Found("scratches", 0.93, (1000.0, 800.0, 1600.0, 1200.0))]))
    left, top, right, bottom = ImageDraw.Draw(picture).textbbox((0, 0), "scratches 0.93", font=label_font((3000, 2000)))
    assert bottom - top >= 0.015 * 2000  # 1.5 % of the shorter side: about 30 px
    label = (drawn[:800, 998] == (255, 0, 0)).all(axis=1)  # the label's background, left of its text, above the box
    assert label.sum() >= bottom - top
    assert (drawn[1000, 1000:1003] == (255, 0, 0)).all()  # the box's edge is more than a hairline
    assert np.asarray(picture).max() == 128  # drawn on a copy


def boxes_at(*corners: int) -> torch.Tensor:
    """20-pixel squares whose top-left corners are (c, c)."""
    return torch.tensor([[c, c, c + 20, c + 20] for c in corners], dtype=torch.float32).reshape(-1, 4)


def test_each_class_threshold_is_the_score_with_the_best_f1():
    from edgelearn.detection.thresholds import DEFAULT_THRESHOLD, per_class

    truth = [{"boxes": boxes_at(0), "labels": torch.tensor([1])} for _ in range(3)]
    # class 1, by score: hit, miss (elsewhere), hit, hit, and a second box on a found square (a false alarm);
    # class 2 has no true box, and its detection on a class-1 square is no hit for class 1
    found = [{"boxes": boxes_at(0, 50, 1), "scores": torch.tensor([0.9, 0.8, 0.3]), "labels": torch.tensor([1, 1, 1])},
             {"boxes": boxes_at(0, 0), "scores": torch.tensor([0.7, 0.95]), "labels": torch.tensor([1, 2])},
             {"boxes": boxes_at(1), "scores": torch.tensor([0.6]), "labels": torch.tensor([1])}]
    chosen = per_class(found, truth, ["scratch", "pit"])
    # thresholds 0.9 / 0.8 / 0.7 / 0.6 / 0.3: F1 0.5, 0.4, 0.67, 0.86 (3 of 4 right, all 3 found), 0.75
    assert chosen["scratch"] == {"threshold": 0.6000000238418579, "precision": 0.75, "recall": 1.0, "f1": 0.8571}
    assert chosen["pit"]["threshold"] == DEFAULT_THRESHOLD  # nothing to judge it by
    at = per_class(found, truth, ["scratch", "pit"], {"scratch": 0.75})
    assert at["scratch"] == {"threshold": 0.75, "precision": 0.5, "recall": 0.3333, "f1": 0.4}
    assert at["pit"] == {"threshold": DEFAULT_THRESHOLD, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_a_detector_file_keeps_its_thresholds_and_refuses_broken_ones(tmp_path):
    det = tiny(["square", "bar"])
    det.save(tmp_path / "plain.safetensors")
    assert load_detector(tmp_path / "plain.safetensors").thresholds == {}  # files from before thresholds load
    det.thresholds = {"square": 0.42, "bar": 0.07}
    det.save(tmp_path / "d.safetensors")
    assert load_detector(tmp_path / "d.safetensors").thresholds == {"square": 0.42, "bar": 0.07}
    assert load_detector(tmp_path / "d.safetensors").extended(["round"]).thresholds == det.thresholds
    det.thresholds = {"square": "high"}
    det.save(tmp_path / "bad.safetensors")
    with pytest.raises(EdgelearnError, match="bad.safetensors: damaged detector file"):
        load_detector(tmp_path / "bad.safetensors")


def test_training_chooses_thresholds_that_detect_and_evaluate_use(overfitted, tmp_path):
    from edgelearn.detection.infer import DetectorRunner

    root, model, result = overfitted
    chosen = load_detector(model).thresholds
    assert set(result["thresholds"]) == {"bar", "square"}
    assert chosen == {name: c["threshold"] for name, c in result["thresholds"].items()}
    det = load_detector(model)
    det.thresholds = {"bar": 0.0, "square": 0.9}
    det.save(tmp_path / "t.safetensors")
    picture = root / "images" / "p0.png"
    everything = DetectorRunner(model).detect([Image.open(picture)], 0.0)[0]
    assert any(o.name == "bar" and o.score < 0.5 for o in everything)  # what a single 0.5 would hide
    out = CliRunner().invoke(app, ["detect", str(tmp_path / "t.safetensors"), str(picture), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["detections"][0]["objects"] == [
        o.as_dict() for o in everything if o.score >= det.thresholds[o.name]]
    report = CliRunner().invoke(app, ["detector", "evaluate", str(tmp_path / "t.safetensors"), str(root), "--json"])
    at = json.loads(report.stdout)["at_threshold"]
    assert at["bar"]["threshold"] == 0.0 and at["square"]["threshold"] == 0.9
    assert at["bar"]["recall"] >= at["square"]["recall"] and at["bar"]["precision"] < 1
