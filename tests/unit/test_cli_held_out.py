"""CLI details found on held-out data: unreadable images, a refused format, bad counts (issue 18, section 5)."""

import json

import pytest
from typer.testing import CliRunner

from edgelearn.cli import app

TINY = ["--backbone", "tiny", "--weights", "random"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def with_bad_images(image_folder):
    """Two unreadable images among the training images and one among the test images."""
    (image_folder / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (image_folder / "train" / "green" / "scan.gif").write_bytes(b"GIF89a not much of a gif")
    (image_folder / "test" / "blue" / "empty.jpg").write_bytes(b"")
    return image_folder


def test_learn_stops_at_the_first_unreadable_image_and_names_it(runner, with_bad_images, tmp_path):
    result = runner.invoke(app, ["learn", str(with_bad_images), "-o", str(tmp_path / "m.edge"), *TINY])
    assert result.exit_code == 1 and "scan.gif: not an image" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "m.edge").exists()


def test_skip_bad_learns_and_evaluates_the_rest_and_lists_every_unreadable_image(runner, with_bad_images, tmp_path):
    model = tmp_path / "m.edge"
    learned = runner.invoke(app, ["learn", str(with_bad_images), "-o", str(model), "--skip-bad", "--json", *TINY])
    assert learned.exit_code == 0, learned.output
    unreadable = json.loads(learned.stdout)["unreadable"]
    assert [line.split(":")[0].rsplit("/", 1)[-1] for line in unreadable] == ["scan.gif", "broken.png", "empty.jpg"]
    said = learned.stderr.splitlines()
    assert said[-4:] == [f"left out {line}" for line in unreadable] + ["3 image(s) could not be read and were left out"]
    assert json.loads(learned.stdout)["evaluation"]["n"] == 9  # 3 test images per class; the 4th, empty, left out
    evaluated = runner.invoke(app, ["evaluate", str(model), str(with_bad_images), "--skip-bad", "--json",
                                    "--weights", "random"])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.stdout)
    assert result["n"] == 9 and len(result["unreadable"]) == 1 and "empty.jpg: empty file" in result["unreadable"][0]
    stopped = runner.invoke(app, ["evaluate", str(model), str(with_bad_images), "--weights", "random"])
    assert stopped.exit_code == 1 and "empty.jpg" in stopped.stderr


def test_per_class_0_is_a_usage_error_before_the_backbone_loads(runner, image_folder, monkeypatch):
    from edgelearn.recognizer import Recognizer

    monkeypatch.setattr(Recognizer, "create", lambda *a, **k: pytest.fail("the backbone was loaded"))
    result = runner.invoke(app, ["learn", str(image_folder), "--per-class", "0", *TINY])
    assert result.exit_code == 2 and "--per-class" in result.output


def test_more_steps_than_classes_warns(runner, image_folder, tmp_path):
    result = runner.invoke(app, ["learn", str(image_folder), "-o", str(tmp_path / "m.edge"), "--steps", "5", *TINY])
    assert result.exit_code == 0, result.output
    assert "warning: --steps 5 is more than the 3 classes" in result.stderr
