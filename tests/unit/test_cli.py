"""The CLI end to end on a tiny generated image folder with the tiny random backbone."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgelearn.cli import app

TINY = ["--backbone", "tiny", "--weights", "random"]


@pytest.fixture
def runner():
    return CliRunner()


def run_json(runner, *args):
    result = runner.invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_learn_predict_evaluate_consolidate_info(runner, image_folder, tmp_path):
    model = tmp_path / "m.edge"
    learned = run_json(runner, "learn", image_folder, "-o", model, "--learner", "fuzzy-artmap", "--steps", "3",
                       *TINY)
    assert [h["classes"] for h in learned["history"]] == [1, 2, 3]
    assert learned["evaluation"]["accuracy"] == 1.0 and learned["evaluation"]["n"] == 9
    assert set(learned["evaluation"]["per_class"]) == {"red", "green", "blue"}

    test_red = sorted((image_folder / "test" / "red").iterdir())[0]
    predicted = run_json(runner, "predict", model, test_red, "--top-k", "2", "--weights", "random")
    assert predicted["predictions"][0]["label"] == "red"
    assert len(predicted["predictions"][0]["alternatives"]) == 1

    evaluated = run_json(runner, "evaluate", model, image_folder, "--weights", "random")
    assert evaluated["accuracy"] == 1.0 and evaluated["top5"] == 1.0
    only_test = tmp_path / "held_out"
    shutil.copytree(image_folder / "test", only_test / "test")  # a folder that holds only test/
    evaluated = run_json(runner, "evaluate", model, only_test, "--weights", "random")
    assert evaluated["accuracy"] == 1.0 and evaluated["n"] == 9 and "test" not in evaluated["per_class"]

    consolidated = run_json(runner, "consolidate", model, "-o", tmp_path / "small.edge")
    assert consolidated["bytes_after"] <= consolidated["bytes_before"]
    info = run_json(runner, "info", tmp_path / "small.edge")
    assert info["n_classes"] == 3 and info["representations"] == 3 and info["examples_seen"] == 18
    assert info["backbone"]["name"] == "tiny"


def test_unknown_images_in_predict_and_evaluate_and_a_single_class_warns(runner, image_folder, tmp_path,
                                                                         monkeypatch):
    from edgelearn.recognizer import Recognizer

    two, others = tmp_path / "two", tmp_path / "others"
    for name in ("red", "green"):
        shutil.copytree(image_folder / "train" / name, two / name)
    shutil.copytree(image_folder / "test" / "blue", others / "blue")
    model = tmp_path / "m.edge"
    run_json(runner, "learn", two, "-o", model, "--learner", "ncm", *TINY)
    result = runner.invoke(app, list(map(str, ["evaluate", model, image_folder, "--unknown", others, "--weights",
                                               "random", "--json"])))
    assert result.exit_code == 0 and "never learned the test classes blue:" in result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["n"] == 6 and set(evaluated["per_class"]) == {"red", "green"}
    assert evaluated["not_learned"]["classes"] == ["blue"]
    open_set = evaluated["open_set"]
    assert open_set["n_known"] == 6 and open_set["n_unknown"] == 6 and 0 <= open_set["auroc"] <= 1
    assert {"fpr95", "closed_set_accuracy", "accuracy_with_rejection", "max_probability"} <= set(open_set)

    monkeypatch.setattr(Recognizer, "unknown", lambda self, top, familiarity: np.ones(len(top), bool))
    blue = sorted((others / "blue").iterdir())[0]
    predicted = run_json(runner, "predict", model, blue, "--weights", "random")["predictions"][0]
    assert predicted["label"] is None and predicted["unknown"] and "familiarity" in predicted
    shown = runner.invoke(app, ["predict", str(model), str(blue), "--weights", "random"], terminal_width=200)
    assert f"unknown — closest: {predicted['alternatives'][0]['label']}" in shown.stdout

    one = tmp_path / "one"
    shutil.copytree(image_folder / "train" / "red", one / "red")
    result = runner.invoke(app, ["learn", str(one), "-o", str(tmp_path / "one.edge"), "--per-class", "2", *TINY])
    assert result.exit_code == 0 and "every image will be called 'red'" in result.stderr


def test_the_backbone_runs_on_onnx_runtime_with_the_same_answers(runner, image_folder, tmp_path):
    run_json(runner, "learn", image_folder, "-o", tmp_path / "onnx.edge", "--learner", "slda", "--runtime", "onnx",
             "--no-cache", *TINY)
    run_json(runner, "learn", image_folder, "-o", tmp_path / "torch.edge", "--learner", "slda", "--no-cache", *TINY)
    images = sorted((image_folder / "test").rglob("*.png"))
    answers = {}
    for model, runtime in (("onnx", "onnx"), ("torch", "onnx"), ("onnx", "torch")):
        out = run_json(runner, "predict", tmp_path / f"{model}.edge", *images, "--runtime", runtime, *TINY[2:])
        answers[model, runtime] = out["predictions"]
    reference = answers.pop(("onnx", "onnx"))
    for other in answers.values():
        assert [p["label"] for p in other] == [p["label"] for p in reference]
        assert [p["confidence"] for p in other] == pytest.approx([p["confidence"] for p in reference], abs=1e-3)
    evaluated = run_json(runner, "evaluate", tmp_path / "onnx.edge", image_folder, "--runtime", "onnx", "--no-cache",
                         *TINY[2:])
    assert evaluated["n"] == 9


def test_a_model_learned_in_one_step_consolidated_after_each(runner, image_folder, tmp_path):
    out = run_json(runner, "learn", image_folder, "-o", tmp_path / "m.edge", "--learner", "ncm",
                   "--per-class", "2", "--consolidation", "after_each_step", *TINY)
    assert out["info"]["examples_seen"] == 6


@pytest.mark.parametrize("args, message", [
    (["learn", "/no/such/folder", *TINY], "not found"),
    (["predict", "/no/such/model.edge", "x.png"], "no such file"),
    (["learn", "{data}", "--steps", "99", *TINY], "cannot split 18 examples into 99 steps"),
    (["learn", "{data}", "-o", "{data}/test/red/red_0.png/m.edge", *TINY], "cannot write"),
    (["federate", "--site", "a={data}", "--allow-unsigned", "--node-auth", "--workdir", "{data}/fw"], "needs TLS"),
])
def test_user_errors_are_one_line_exit_1(runner, image_folder, args, message):
    result = runner.invoke(app, [a.format(data=image_folder) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.stderr.strip().splitlines()[-1]  # after any progress lines
    assert error.startswith("error: ") and message in error


@pytest.mark.parametrize("args, wrong, choices", [
    (["learn", "{data}", "--learner", "svm"], "svm", ["fuzzy-artmap", "slda", "ncm"]),
    (["learn", "{data}", "--consolidation", "sometimes"], "sometimes", ["none", "after_each_step", "final"]),
    (["learn", "{data}", "--runtime", "tensorrt"], "tensorrt", ["torch", "onnx"]),
    (["train", "{data}", "--strategy", "nope"], "nope", ["frozen", "partial", "full"]),
    (["train", "{data}", "--mode", "mpi"], "mpi", ["single", "ddp", "ps"]),
    (["consolidate", "m.edge", "--strategy", "median"], "median", ["union", "mean"]),
    (["representatives", "{data}", "--method", "nope"], "nope", ["phash", "ssim", "feature"]),
    (["frames", "{data}", "-o", "x", "--dedupe", "md5"], "md5", ["phash", "none"]),
    (["compress", "m.pt", "--precision", "int4"], "int4", ["fp32", "fp16", "int8-dynamic", "int8"]),
    (["detector", "train", "{data}", "--arch", "yolo"], "yolo", ["ssdlite", "retinanet"]),
    (["federate-train", "--site", "a={data}", "--strategy", "fedprox"], "fedprox", ["fedavg", "team"]),
    (["serve", "--learner", "svm"], "svm", ["fuzzy-artmap", "slda", "ncm"]),
])
def test_a_wrong_choice_is_a_usage_error_that_lists_the_choices(runner, image_folder, args, wrong, choices):
    result = runner.invoke(app, [a.format(data=image_folder) for a in args])
    assert result.exit_code == 2
    assert wrong in result.stderr and all(choice in result.stderr for choice in choices)


def test_options_that_would_be_ignored_are_refused(runner, image_folder, tmp_path):
    model = tmp_path / "m.edge"
    run_json(runner, "learn", image_folder, "-o", model, *TINY)
    for extra in (["--level", "1"], ["--runtime", "onnx"], ["--no-cache"]):
        result = runner.invoke(app, ["evaluate", str(model), str(image_folder), "--variants", *extra])
        assert result.exit_code == 2 and extra[0] in result.stderr
    sites = [f"--site=a={image_folder}", f"--site=b={image_folder}"]
    for extra in (["--train", "team"], ["--strategy", "team"], ["--local-epochs", "2"]):
        result = runner.invoke(app, ["federate", *sites, "--allow-unsigned", *extra])
        assert result.exit_code == 2 and "No such option" in result.stderr
    for extra in (["--keys", str(tmp_path)], ["--trust", str(tmp_path)], ["--learner", "ncm"],
                  ["--backbone", "tiny"], ["--consolidate"]):
        result = runner.invoke(app, ["federate-train", *sites, "--strategy", "team", *extra])
        assert result.exit_code == 2 and "No such option" in result.stderr
    for mode, extra in (("single", ["--rank", "1"]), ("single", ["--workers", "3"]), ("ddp", ["--address", "h:1"])):
        result = runner.invoke(app, ["train", str(image_folder), "--mode", mode, *extra, *TINY])
        assert result.exit_code == 2 and extra[0] in result.stderr


def test_a_bug_keeps_its_traceback_while_a_user_error_is_one_line(runner, image_folder, tmp_path, monkeypatch):
    from edgelearn.errors import NotFittedError
    from edgelearn.recognizer import Recognizer

    def broken(*args, **kwargs):
        raise ValueError("index 3 is out of bounds for axis 0 with size 3")  # a bug, not the user's doing

    monkeypatch.setattr(Recognizer, "load", broken)
    result = runner.invoke(app, ["info", str(tmp_path / "m.edge")])
    assert isinstance(result.exception, ValueError) and "error:" not in result.stderr

    def not_fitted(*args, **kwargs):
        raise NotFittedError("this model has learned nothing yet")

    monkeypatch.setattr(Recognizer, "load", not_fitted)
    result = runner.invoke(app, ["info", str(tmp_path / "m.edge")])
    assert result.exit_code == 1 and result.stderr.strip() == "error: this model has learned nothing yet"


def test_every_choice_matches_the_library_and_every_cli_module_stays_small():
    from edgelearn.cli import options
    from edgelearn.detection.models import ARCHITECTURES
    from edgelearn.evaluation import CONSOLIDATION
    from edgelearn.explain.representatives import METHODS
    from edgelearn.federation.training.strategies import STRATEGIES as FEDERATED
    from edgelearn.learners import ALIASES, LEARNERS
    from edgelearn.learners.fuzzy_artmap import STRATEGIES as FOLDS
    from edgelearn.runtime import Precision, Runtime
    from edgelearn.training import MODES, STRATEGIES

    def values(choices):
        return sorted(c.value for c in choices)

    assert options.Runtime is Runtime and options.Precision is Precision  # the library's own choices
    assert values(options.Arch) == sorted(ARCHITECTURES) and values(options.Consolidation) == sorted(CONSOLIDATION)
    assert values(options.Similarity) == sorted(METHODS) and values(options.FederatedStrategy) == sorted(FEDERATED)
    assert values(options.Fold) == sorted(FOLDS) and values(options.Mode) == sorted(MODES)
    assert values(options.Strategy) == sorted(STRATEGIES)
    assert sorted(ALIASES.get(v, v) for v in values(options.Learner)) == sorted(LEARNERS)
    package = Path(options.__file__).parent
    assert [p.name for p in package.glob("*.py") if len(p.read_text().splitlines()) > 250] == []


def test_corrupt_image_and_usage_error_from_the_real_command(image_folder, tmp_path):
    model = tmp_path / "m.edge"
    edgelearn = [sys.executable, "-m", "edgelearn"]
    done = subprocess.run([*edgelearn, "learn", image_folder, "-o", model, *TINY], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    done = subprocess.run([*edgelearn, "predict", model, bad, "--weights", "random"], capture_output=True, text=True)
    assert done.returncode == 1 and "bad.jpg" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([*edgelearn, "learn", "--steps", "x"], capture_output=True, text=True)
    assert done.returncode == 2


def test_demo_runs_the_main_job_on_a_given_folder(runner, image_folder, tmp_path):
    out = run_json(runner, "demo", image_folder, "--steps", "3", "--weights", "random", "-o", tmp_path / "d.edge")
    assert len(out["history"]) == 3 and out["evaluation"]["n"] == 9
    assert (tmp_path / "d.edge").is_file()


def test_representatives_picks_k_per_class_and_copies_them(runner, image_folder, tmp_path):
    out = run_json(runner, "representatives", image_folder / "train", "--per-class", "2", "--method", "hist",
                   "-o", tmp_path / "reps")
    assert out["method"] == "hist" and set(out["representatives"]) == {"red", "green", "blue"}
    assert all(len(v) == 2 and len(set(v)) == 2 for v in out["representatives"].values())
    assert len(list((tmp_path / "reps" / "red").iterdir())) == 2
    features = run_json(runner, "representatives", image_folder / "train", "--per-class", "1", "--method",
                        "feature", "--weights", "random")
    assert features["method"] == "feature"


def test_frames_turns_concept_folders_of_videos_into_a_data_set(runner, tmp_path):
    from tests.unit.test_station import write_video

    (tmp_path / "videos/handbrake").mkdir(parents=True)
    write_video(tmp_path / "videos/handbrake/clip.avi", ["red", "blue"])
    out = run_json(runner, "frames", tmp_path / "videos", "-o", tmp_path / "data", "--every", "2")
    assert out["frames"]["handbrake"] == out["total"] >= 2
    assert len(list((tmp_path / "data/handbrake").glob("*.jpg"))) == out["total"]
    bad = runner.invoke(app, ["frames", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "no such folder" in bad.output


def test_calibrate_fits_a_temperature_and_saves_it(runner, image_folder, tmp_path):
    model = tmp_path / "m.edge"
    run_json(runner, "learn", image_folder, "-o", model, "--learner", "slda", *TINY)
    out = run_json(runner, "calibrate", model, image_folder, "--weights", "random")
    assert out["n"] == 9 and out["temperature"] > 0 and out["ece_after"] <= out["ece_before"] + 1e-9
    assert run_json(runner, "info", model)["temperature"] == pytest.approx(out["temperature"])


def test_evaluate_compares_every_variant_of_the_backbone(runner, image_folder, tmp_path):
    run_json(runner, "learn", image_folder, "-o", tmp_path / "m.edge", "--learner", "slda", *TINY)
    out = run_json(runner, "evaluate", tmp_path / "m.edge", image_folder, "--variants", "--weights", "random")
    rows = {(r["runtime"], r["precision"]): r for r in out["variants"]}
    assert set(rows) == {("torch", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8-dynamic"),
                         ("onnx", "int8")}
    assert rows["onnx", "int8"]["bytes"] < rows["onnx", "fp32"]["bytes"]
    assert rows["onnx", "fp32"]["accuracy"] == rows["torch", "fp32"]["accuracy"]
    assert all(0 <= r["accuracy"] <= 1 and r["p50_ms"] > 0 and r["batch32_per_s"] > 0 for r in rows.values())
    result = runner.invoke(app, ["evaluate", str(tmp_path / "m.edge"), str(image_folder), "--variants"])
    assert result.exit_code == 1 and "weights" in result.output  # not the weights it learned on


LITERT = pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None,
                            reason="LiteRT converter not installed: pip install 'edgelearn[litert]'")


@pytest.mark.parametrize("precision, suffix", [("fp32", ".onnx"), ("int8", ".onnx"), ("fp32", ".pt2"),
                                               pytest.param("fp32", ".tflite", marks=LITERT)])
def test_compress_exports_a_classifier_that_agrees_with_torch(runner, image_folder, tmp_path, precision, suffix):
    run_json(runner, "train", image_folder, "-o", tmp_path / "ft.pt", "--strategy", "full", "--epochs", "1",
             "--backbone", "tiny", "--weights", "random", "--patch", "24", "--grid", "2")
    out = run_json(runner, "compress", tmp_path / "ft.pt", "-o", tmp_path / f"ft{suffix}", "--precision", precision,
                   "--calibration", image_folder, "--calibration-per-class", "3")
    assert out["top1_agreement"] >= (1.0 if precision == "fp32" else 0.8)
    assert out["max_abs_logit_difference"] < (1e-4 if precision == "fp32" else 0.5)
    report = run_json(runner, "inspect", tmp_path / f"ft{suffix}", image_folder)
    torch_report = run_json(runner, "inspect", tmp_path / "ft.pt", image_folder)
    assert report["patches_per_image"] == 4 and report["parameters"] == torch_report["parameters"]
    if precision == "fp32":
        assert report["accuracy"] == torch_report["accuracy"]
    result = runner.invoke(app, ["compress", str(tmp_path / "ft.pt"), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "--calibration" in result.output


def test_train_then_learn_on_the_fine_tuned_backbone(runner, image_folder, tmp_path):
    out = run_json(runner, "train", image_folder, "-o", tmp_path / "ft.pt", "--strategy", "full", "--epochs",
                   "2", "--lr", "0.01", "--batch-size", "8", "--backbone", "tiny", "--weights", "random")
    assert out["best_epoch"] in (1, 2) and len(out["history"]) == 2 and out["classes"] == ["blue", "green", "red"]
    learned = run_json(runner, "learn", image_folder, "-o", tmp_path / "m.edge", "--backbone", "tiny", "--weights",
                       tmp_path / "ft.pt")
    assert learned["evaluation"]["accuracy"] == 1.0
    missing = runner.invoke(app, ["train", str(image_folder), "--from", str(tmp_path / "nope.pt"), "--backbone",
                                  "tiny", "--weights", "random"])
    assert missing.exit_code == 1 and "no such model" in missing.output


def test_federated_training_refuses_bad_settings_before_starting_anything(runner, image_folder, tmp_path):
    sites = [f"--site=a={image_folder}", f"--site=b={image_folder}"]
    no_test = runner.invoke(app, ["federate-train", *sites, "--strategy", "team", "--test", str(tmp_path),
                                  "--workdir", str(tmp_path / "w")])
    assert no_test.exit_code == 1 and "test/ split" in no_test.output
    empty = runner.invoke(app, ["federate-train", *sites, "--strategy", "team", "--path-fraction", "0", "--workdir",
                                str(tmp_path / "w")])
    assert empty.exit_code == 1 and "--path-fraction must be in (0, 1]" in empty.output
    assert not (tmp_path / "w").exists()
