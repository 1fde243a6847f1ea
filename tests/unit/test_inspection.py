import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from edgelearn.backbones import Preprocessing
from edgelearn.cli import app
from edgelearn.data import FolderDataset
from edgelearn.data.patches import PatchGrid, RandomPatches
from edgelearn.inspection import Inspector, Student, StudentConfig, distill, evaluate_inspection, load_model
from edgelearn.inspection.analysis import analyse_model, disentanglement, sparsity, weight_change
from edgelearn.inspection.inspector import InspectionModel, is_defect_free
from edgelearn.inspection.student import count_parameters

QUIET = {"log": lambda *a: None}


def textures(root, per_class=16, test=6, size=64, seed=0, classes=("smooth", "scratch", "spots")):
    """Gray noise, the same with bright scratches or dark spots all over (like NEU's textures)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test)):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.normal(128, 12, (size, size)).clip(0, 255)
                for x, y in rng.integers(0, size - 8, (size * 3 // 4, 2)):
                    if name == "scratch":
                        img[y:y + 2, x:x + 8] = 250
                    elif name == "spots":
                        img[y:y + 3, x:x + 3] = 10
                Image.fromarray(img.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("size, grid, width, height", [(128, 3, 200, 200), (224, 3, 512, 512), (32, 2, 50, 63),
                                                       (40, 1, 40, 40), (30, 4, 100, 31)])
def test_the_test_patches_cover_every_pixel(size, grid, width, height):
    covered = np.zeros((height, width), bool)
    boxes = PatchGrid(size, grid).boxes(width, height)
    assert len(boxes) == grid * grid
    for left, top, right, bottom in boxes:
        assert 0 <= left and 0 <= top and right <= width and bottom <= height
        assert right - left == size and bottom - top == size
        covered[top:bottom, left:right] = True
    assert covered.all()


def test_patch_geometry_refuses_gaps_and_enlarges_small_images():
    with pytest.raises(ValueError, match="gaps"):
        PatchGrid(32, 2).boxes(100, 100)
    crops = PatchGrid(64, 3).crops(Image.new("RGB", (40, 50)))
    assert [c.size for c in crops] == [(64, 64)] * 9


def test_a_training_patch_contains_the_known_defect():
    grid, generator = PatchGrid(64, 3), torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = grid.random_box(200, 150, generator, containing=(120, 30, 150, 60))
        assert left <= 120 and right >= 150 and top <= 30 and bottom >= 60 and right <= 200 and bottom <= 150


def test_random_patches_follow_boxes_given_in_original_pixels(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    img[30:34, 30:34] = 255  # the defect
    Image.fromarray(img).save(tmp_path / "d.png")
    ds = RandomPatches([tmp_path / "d.png"] * 20, [1] * 20, PatchGrid(48, 3), lambda p: np.asarray(p),
                       boxes=[(30, 30, 34, 34)] * 20)  # the image is enlarged to 48 px first
    assert all(ds[i][0].max() == 255 for i in range(20))


class BrightSpot(nn.Module):
    """Class 1 ('defect') for a patch holding a bright pixel, else class 0 ('ok')."""

    def forward(self, x):
        bright = (x.amax(dim=(1, 2, 3)) > 2.0).float()
        return torch.stack([1 - bright, bright], 1) * 10


def test_one_defective_patch_makes_the_image_defective():
    model = InspectionModel(BrightSpot(), ["ok", "defect"], Preprocessing(32, 32), PatchGrid(32, 3), {})
    inspector = Inspector(model)
    clean = np.full((64, 64, 3), 100, np.uint8)
    spotted = clean.copy()
    spotted[2:4, 2:4] = 255  # only the top-left patch sees it
    ok, bad = inspector.inspect([Image.fromarray(clean), Image.fromarray(spotted)])
    assert not ok.defective and ok.label == "ok" and ok.votes == {"ok": 9}
    assert bad.defective and bad.label == "defect" and bad.votes == {"ok": 8, "defect": 1}
    assert bad.patches[0] == "defect"


def test_evaluation_counts_found_defects_and_passed_parts(tmp_path):
    for name, spotted in (("ok", [False] * 3), ("defect", [True, True, False])):
        (tmp_path / name).mkdir()
        for i, spot in enumerate(spotted):
            pixels = np.full((64, 64, 3), 100, np.uint8)
            pixels[40:42, 50:52] = 255 if spot else 100
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    model = InspectionModel(BrightSpot(), ["defect", "ok"][::-1], Preprocessing(32, 32), PatchGrid(32, 3), {})
    report = evaluate_inspection(Inspector(model), FolderDataset.scan(tmp_path))
    assert report["accuracy"] == pytest.approx(5 / 6)
    assert report["defect_detection"] == pytest.approx({"tpr": 2 / 3, "tnr": 1.0})
    assert report["per_class"]["defect"] == pytest.approx({"n": 3, "tpr": 2 / 3, "tnr": 1.0})
    assert report["per_class"]["ok"] == pytest.approx({"n": 3, "tpr": 1.0, "tnr": 2 / 3})


def test_without_a_defect_free_class_the_majority_decides():
    model = InspectionModel(BrightSpot(), ["crazing", "scratches"], Preprocessing(32, 32), PatchGrid(32, 3), {})
    spotted = np.full((64, 64, 3), 100, np.uint8)
    spotted[2:4, 2:4] = 255
    (result,) = Inspector(model).inspect([Image.fromarray(spotted)])
    assert result.label == "crazing" and result.defective


def test_defect_free_names():
    assert all(map(is_defect_free, ["ok", "OK", "good", "texture1/ok", "t1_ok", "defect-free", "normal"]))
    assert not any(map(is_defect_free, ["scratches", "broken", "okra", "texture1/defect"]))


def test_the_student_has_the_papers_size():
    paper = Student(StudentConfig(12, filters=(4, 8, 16, 4, 4), hidden=4096, input_size=224, batch_norm=False))
    assert count_parameters(paper) == 858_380  # paper 003, Table 5
    assert Student(StudentConfig(6, input_size=128))(torch.zeros(2, 3, 128, 128)).shape == (2, 6)
    with pytest.raises(ValueError, match="nothing"):
        Student(StudentConfig(2, input_size=16))


def test_distillation_on_generated_textures_learns(tmp_path):
    data = textures(tmp_path / "tex")
    # the teacher: a wider network trained on the labels (a tiny random "backbone" makes a wild teacher)
    distill(data, tmp_path / "teacher.pt", patch=PatchGrid(32, 3), filters=(16,) * 5, hidden=64, epochs=6,
            batch_size=16, **QUIET)
    teacher = Inspector.load(tmp_path / "teacher.pt")
    test = FolderDataset.splits(data)[1]
    teacher_report = evaluate_inspection(teacher, test)
    result = distill(data, tmp_path / "student.pt", teacher=tmp_path / "teacher.pt", filters=(4,) * 5, hidden=16,
                     epochs=6, batch_size=16, **QUIET)
    history = result["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] / 2
    student = Inspector.load(tmp_path / "student.pt")
    report = evaluate_inspection(student, test)
    assert teacher_report["accuracy"] >= 0.8 and report["accuracy"] >= 0.8  # chance: 0.33
    assert report["parameters"] < teacher_report["parameters"] / 10
    assert set(report["per_class"]) == {"smooth", "scratch", "spots"} and "defect_detection" not in report
    # the student answers like its teacher on most patches
    images = [Image.open(p).convert("RGB") for p in test.paths]
    agree = (teacher.patch_logits(images).argmax(-1) == student.patch_logits(images).argmax(-1)).float().mean()
    assert agree >= 0.8


def test_scratch_student_resumes_exactly(tmp_path):
    data = textures(tmp_path / "tex", per_class=6, test=2)
    settings = {"patch": PatchGrid(32, 3), "filters": (4, 4, 4, 4, 4), "hidden": 8, "patches_per_image": 2,
                "batch_size": 16, **QUIET}
    distill(data, tmp_path / "straight.pt", epochs=2, **settings)
    distill(data, tmp_path / "split.pt", epochs=1, **settings)
    distill(data, tmp_path / "split.pt", epochs=2, resume=True, **settings)
    a = torch.load(tmp_path / "straight.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split.ckpt", weights_only=True)["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value)


def test_a_student_file_that_changed_is_refused(tmp_path):
    data = textures(tmp_path / "tex", per_class=4, test=1)
    distill(data, tmp_path / "s.pt", patch=PatchGrid(32, 3), filters=(4,) * 5, hidden=8, epochs=1, **QUIET)
    raw = bytearray((tmp_path / "s.pt").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "s.pt").write_bytes(bytes(raw))
    with pytest.raises(Exception, match="sha256"):
        load_model(tmp_path / "s.pt")
    with pytest.raises(Exception, match="sidecar"):
        load_model(tmp_path / "missing.pt")


def test_weight_change_and_sparsity():
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU())
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU())
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[2].weight.mul_(1.5)
    assert weight_change(a, b) == pytest.approx({"0": 0.0, "2": 0.5})
    with torch.no_grad():
        b[2].bias.fill_(-1e3)  # every channel of the second layer is dead
        b[0].bias.fill_(1e3)  # none of the first
    assert sparsity(b, [torch.rand(5, 3, 8, 8)]) == pytest.approx({"1": 0.0, "3": 1.0})


def test_disentanglement_is_zero_on_a_line_and_grows_when_the_manifold_folds():
    t = np.linspace(0, 1, 200)
    line = np.stack([t, 2 * t], 1)
    assert disentanglement(line)["d"] == pytest.approx(0, abs=1e-9)
    angle = 3 * np.pi * t  # a spiral: close in space, far along the manifold
    spiral = np.stack([(1 + 2 * t) * np.cos(angle), (1 + 2 * t) * np.sin(angle)], 1)
    assert disentanglement(spiral)["d"] > 0.3


def test_cli_trains_inspects_and_analyses(tmp_path):
    data = textures(tmp_path / "tex", per_class=6, test=2)
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "t.pt"), "--backbone", "tiny",
                                 "--weights", "random", "--strategy", "full", "--epochs", "1", "--patch", "32"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.json").read_text())["patch"] == {"size": 32, "grid": 3}
    result = runner.invoke(app, ["distill", str(data), "--teacher", str(tmp_path / "t.pt"), "-o",
                                 str(tmp_path / "s.pt"), "--epochs", "1", "--filters", "4,4,4,4,4", "--hidden", "8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "s.pt"), str(data), "--json"])
    report = json.loads(result.stdout)
    assert report["images"] == 6 and report["patches_per_image"] == 9 and report["ms_per_image"] > 0
    result = runner.invoke(app, ["inspect", str(tmp_path / "s.pt"), str(data / "test" / "smooth"), "--json"])
    assert len(json.loads(result.stdout)["inspections"]) == 2
    result = runner.invoke(app, ["analyse", str(tmp_path / "t.pt"), str(data), "--weights", "random", "--json",
                                 "--plot", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    analysis = json.loads(result.stdout)
    assert len(analysis["weight_change"]) == 3 and max(analysis["weight_change"].values()) > 0
    assert (tmp_path / "a.png").stat().st_size > 1000
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing.pt"), str(data)])
    assert result.exit_code == 1 and "sidecar" in result.output


def test_analysis_of_a_student_starts_from_its_seed(tmp_path):
    data = textures(tmp_path / "tex", per_class=4, test=2)
    distill(data, tmp_path / "s.pt", patch=PatchGrid(32, 3), filters=(4,) * 5, hidden=8, epochs=1, **QUIET)
    untrained = analyse_model(tmp_path / "s.pt", FolderDataset.splits(data)[1])
    assert len(untrained["weight_change"]) == 5 and all(0 < g < 1 for g in untrained["weight_change"].values())
    assert untrained["disentanglement"]["points"] == 6


def voc_defects(root, n=8, size=128, seed=0):
    """Dark pictures, each with one or two bright defect squares boxed in a VOC annotation (the last without)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        pixels = np.full((size, size, 3), 20, np.uint8)
        objects = ""
        for name, side in [("pit", 12), ("scratch", 20)][: 2 if i % 2 else 1] if i < n - 1 else []:
            x, y = rng.integers(0, size - side, 2)
            pixels[y:y + side, x:x + side] = 255
            objects += (f"<object><name>{name}</name><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
                        f"<xmax>{x + side}</xmax><ymax>{y + side}</ymax></bndbox></object>")
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        (root / "annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>{size}</width><height>{size}</height></size>"
            f"{objects}</annotation>")
    return root


def test_patch_training_on_a_voc_folder_draws_patches_that_hold_the_defect(tmp_path):
    from edgelearn.training import TrainConfig
    from edgelearn.training.finetune import prepare

    root = voc_defects(tmp_path / "voc")
    job = prepare(TrainConfig(root, tmp_path / "t.pt", weights="random", patch=PatchGrid(40, 4), val_fraction=0.2))
    patches = job.train_set
    assert isinstance(patches, RandomPatches) and len(patches) >= 5
    names = job.summary["classes"]
    assert names == ["ok", "pit", "scratch"]  # each picture's main defect (most boxed area); none: ok
    patches.transform = np.asarray
    for i, path in enumerate(patches.paths):
        has_defect = names[patches.targets[i]] != "ok"
        assert bool(patches.boxes[i]) == has_defect
        for _ in range(10):
            assert (patches[i][0] == 255).any() == has_defect, path  # every patch overlaps its box
