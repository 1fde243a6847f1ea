"""Module A as a bundle: exported with PyTorch, run without it, with the PyTorch backbone's fingerprint."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgelearn import Recognizer
from edgelearn.backbones import BundleBackbone, Preprocessing, build_backbone, export_bundle
from edgelearn.cli import app as cli_app
from edgelearn.errors import ModelFileError, ParameterError, WeightsError
from edgelearn.server import Station, StationConfig
from tests.conftest import COLOURS


def colour_image(name, seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    noise = rng.integers(-25, 25, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8))


def tiny():
    return build_backbone("tiny", weights="random", input_size=32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_bundle(tiny(), tmp_path_factory.mktemp("bundle") / "tiny.edgebundle")


def test_a_bundle_has_the_torch_backbones_fingerprint_and_features(bundle):
    torch_bb, bundle_bb = tiny(), build_backbone("tiny", weights=bundle)
    images = [colour_image(c, i) for i, c in enumerate(list(COLOURS)[:4])]
    same_input = np.stack([torch_bb.transform(im).numpy() for im in images])

    assert isinstance(bundle_bb, BundleBackbone)
    assert bundle_bb.fingerprint == torch_bb.fingerprint
    assert bundle_bb.feature_dim == torch_bb.feature_dim
    assert np.abs(bundle_bb.embed_tensor(same_input) - torch_bb.embed(images)).max() < 1e-5
    # end to end, Pillow's resize may differ from torchvision's by one grey level in a few pixels
    assert np.allclose(bundle_bb.embed(images), torch_bb.embed(images), atol=1e-3)


@pytest.mark.parametrize("size", [(40, 48), (48, 40), (75, 50), (20, 30)])
def test_the_numpy_preprocessing_follows_torchvisions_sizes_crop_and_arithmetic(size):
    image = colour_image("red", 3, size)
    unresized = Preprocessing(32, 32)  # an image whose short side is already 32 px is only cropped
    one_level = 1 / 255 / min(Preprocessing().std) + 1e-6

    for pre in (Preprocessing(32, 37), Preprocessing(224, 256)):
        assert pre.array(image).shape == (3, pre.input_size, pre.input_size)
        assert np.abs(pre.array(image) - pre.transform()(image).numpy()).max() <= one_level
    exact = colour_image("blue", 4, (32, 45))
    assert np.array_equal(unresized.array(exact), unresized.transform()(exact).numpy())


def test_a_recognizer_learns_predicts_and_reloads_from_a_bundle_without_torch(bundle, tmp_path):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch or torchvision now fails
sys.modules["torchvision"] = None
from PIL import Image
from edgelearn import Recognizer
rec = Recognizer.create("tiny", learner="slda", weights={str(bundle)!r})
red, blue = Image.new("RGB", (40, 48), (220, 30, 30)), Image.new("RGB", (48, 40), (30, 30, 220))
rec.learn([red, blue, red, blue], ["red", "blue", "red", "blue"])
print(*[p.label for p in rec.predict([red, blue])])
rec.save({str(tmp_path / "m.edge")!r})
print(Recognizer.load({str(tmp_path / "m.edge")!r}).predict([blue])[0].label)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["red", "blue", "blue"]


def test_knowledge_learned_on_torch_loads_onto_the_bundle(bundle, tmp_path):
    rec = Recognizer(tiny(), Recognizer.create("tiny", learner="ncm", weights="random", input_size=32).learner)
    images = [colour_image("red", i) for i in range(3)] + [colour_image("blue", i) for i in range(3)]
    rec.learn(images, ["red"] * 3 + ["blue"] * 3)
    rec.save(tmp_path / "m.edge")

    loaded = Recognizer.load(tmp_path / "m.edge", weights=bundle)

    assert isinstance(loaded.backbone, BundleBackbone)
    assert [p.label for p in loaded.predict([colour_image("red", 9), colour_image("blue", 9)])] == ["red", "blue"]


def rewrite(bundle, target, change):
    with zipfile.ZipFile(bundle) as z:
        members = {name: z.read(name) for name in z.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return target


def test_an_altered_or_damaged_bundle_is_refused(bundle, tmp_path):
    def alter_graph(members):
        graph = bytearray(members["model.onnx"])
        graph[-10] ^= 1
        members["model.onnx"] = bytes(graph)

    altered = rewrite(bundle, tmp_path / "altered.edgebundle", alter_graph)
    no_sidecar = rewrite(bundle, tmp_path / "half.edgebundle", lambda m: m.pop("bundle.json"))
    (tmp_path / "junk.edgebundle").write_bytes(b"not a zip")

    with pytest.raises(ModelFileError, match="sha256"):
        build_backbone("tiny", weights=altered)
    with pytest.raises(ModelFileError, match="bundle.json is missing"):
        build_backbone("tiny", weights=no_sidecar)
    with pytest.raises(ModelFileError, match="not a readable bundle"):
        build_backbone("tiny", weights=tmp_path / "junk.edgebundle")
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("tiny", weights=tmp_path / "none.edgebundle")


def test_a_bundle_refuses_another_backbone_input_size_or_precision(bundle):
    with pytest.raises(WeightsError, match="--backbone tiny"):
        build_backbone("mobilenet_v2", weights=bundle)
    with pytest.raises(WeightsError, match="--input-size 64"):
        build_backbone("tiny", weights=bundle, input_size=64)
    with pytest.raises(ParameterError, match="--precision fp16"):
        build_backbone("tiny", weights=bundle, precision="fp16")


def test_export_backbone_writes_a_bundle_and_explains_a_wrong_name(tmp_path):
    runner = CliRunner()
    args = ["export-backbone", "--backbone", "tiny", "--weights", "random", "--input-size", "32",
            "--precision", "fp16", "--json", "-o"]

    done = runner.invoke(cli_app, [*args, str(tmp_path / "tiny16.edgebundle")])
    wrong = runner.invoke(cli_app, [*args, str(tmp_path / "tiny.onnx")])
    int8 = runner.invoke(cli_app, [*args[:-4], "--precision", "int8", "-o", str(tmp_path / "t8.edgebundle")])

    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["precision"] == "fp16" and result["feature_dim"] == 32
    assert build_backbone("tiny", weights=result["output"]).fingerprint["precision"] == "fp16"
    assert wrong.exit_code == 1 and "edgebundle" in wrong.output and not (tmp_path / "tiny.onnx").exists()
    assert int8.exit_code == 1 and "--calibration" in int8.output


def test_a_station_serves_from_a_bundle_with_heat_maps(bundle, tmp_path):
    station = Station(StationConfig(tmp_path / "station", backbone="tiny", weights=str(bundle), input_size=32))
    try:
        for name in ("red", "blue"):
            station.learn([colour_image(name, i) for i in range(4)], [name] * 4)

        assert station.predict(colour_image("blue", 7))["label"] == "blue"
        assert station.predict(colour_image("red", 7), heatmap=True)["heatmap"].startswith("data:image/png;base64,")
    finally:
        station.close()


def test_a_bundles_heat_map_is_the_torch_backbones(bundle):
    from edgelearn.explain import HeatMapper

    rec = Recognizer.create("tiny", learner="slda", weights="random", input_size=32)
    rec.learn([colour_image(name, i) for name in ("red", "blue") for i in range(4)], ["red"] * 4 + ["blue"] * 4)
    image = colour_image("red", 9)
    gradient = lambda f: rec.learner.logit_gradient(f, "red")  # noqa: E731

    on_torch = HeatMapper(rec.backbone).heat(image, gradient)
    on_bundle = HeatMapper(BundleBackbone(bundle)).heat(image, gradient)

    assert on_torch.max() == pytest.approx(1.0) and np.abs(on_torch - on_bundle).max() < 1e-4


def test_edgelearn_serve_takes_a_bundle_as_its_weights(bundle, tmp_path):
    from tests.integration.server import Server
    from tests.unit.test_station import png

    server = Server(tmp_path / "station", "--backbone", "tiny", "--weights", str(bundle), "--input-size", "32")
    try:
        server.teach("red", "blue")
        files = {"image": ("b.png", png("blue", 9), "image/png")}

        answer = server.client.post("/api/predict", headers=server.auth(), files=files)
        heat = server.client.post("/api/predict?heatmap=true", headers=server.auth(), files=files)

        assert answer.status_code == 200 and answer.json()["label"] == "blue"
        assert heat.status_code == 200 and heat.json()["heatmap"].startswith("data:image/png;base64,")
    finally:
        server.stop()


WORKSTATION_ONLY = ("torch", "torchvision", "captum", "scipy", "skimage", "matplotlib", "imagehash", "onnx")
DEVICE = f"""
import sys
class Block:  # what only the workstation install has is missing here (a finder: a None in sys.modules trips some)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {WORKSTATION_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
"""
NO_TORCH_CLI = DEVICE + "from edgelearn.cli.app import app\napp()\n"
NO_TORCH_STATION = DEVICE + """
from edgelearn.server import Station, StationConfig
from tests.unit.test_bundle import colour_image
data, bundle, package = sys.argv[1:]
station = Station(StationConfig(data, backbone="tiny", weights=bundle, input_size=32))
for name in ("red", "blue"):
    station.learn([colour_image(name, i) for i in range(4)], [name] * 4)
answer = station.predict(colour_image("blue", 7), heatmap=True)
assert answer["label"] == "blue" and answer["heatmap"].startswith("data:image/png"), answer
open(package, "wb").write(station.export())
station.close()
"""


def test_a_station_without_the_workstation_libraries_learns_explains_and_shares(bundle, tmp_path):
    package = tmp_path / "site.edge"
    done = subprocess.run([sys.executable, "-c", NO_TORCH_STATION, str(tmp_path / "station"), str(bundle),
                           str(package)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the knowledge works on the workstation's PyTorch backbone (the same fingerprint)
    rec = Recognizer.from_bytes(package.read_bytes(), backbone=tiny())
    assert rec.predict([colour_image("red", 8)])[0].label == "red"


def test_learn_predict_and_evaluate_run_from_a_bundle_without_torch(bundle, tmp_path):
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "colours", per_class=3)
    model = tmp_path / "m.edge"

    def cli(*args):
        done = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args, "--json"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    cli("learn", str(data / "train"), "-o", str(model), "--backbone", "tiny", "--weights", str(bundle),
        "--learner", "ncm")
    predicted = cli("predict", str(model), str(data / "test" / "red" / "red_0.png"))
    evaluated = cli("evaluate", str(model), str(data / "test"))

    assert predicted["predictions"][0]["label"] == "red"
    assert evaluated["accuracy"] == 1.0

    def refused(*args):
        done = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, timeout=120)
        return done.returncode == 1 and "Traceback" not in done.stderr and "edgelearn[train]" in done.stderr

    assert refused("export-backbone", "-o", str(tmp_path / "b.edgebundle"), "--backbone", "tiny", "--weights", "random")
    assert refused("learn", str(data / "train"), "-o", str(model), "--backbone", "tiny", "--weights", "random")


def test_precision_is_the_bundles_own_and_another_is_refused(tmp_path):
    from tests.conftest import make_image_folder

    fp16 = export_bundle(tiny(), tmp_path / "t16.edgebundle", "fp16")
    data, model = make_image_folder(tmp_path / "colours", per_class=3), tmp_path / "m.edge"
    runner = CliRunner()
    common = ["--backbone", "tiny", "--weights", str(fp16)]

    learned = runner.invoke(cli_app, ["learn", str(data / "train"), "-o", str(model), *common, "--precision", "fp16"])
    asked_int8 = runner.invoke(cli_app, ["predict", str(model), str(data / "test" / "red" / "red_0.png"),
                                         "--weights", str(fp16), "--precision", "int8"])
    served = Station(StationConfig(tmp_path / "station", backbone="tiny", weights=str(fp16), input_size=32))

    assert learned.exit_code == 0, learned.output
    assert asked_int8.exit_code == 1 and "is fp16, not int8" in asked_int8.output
    assert served.rec.backbone.fingerprint["precision"] == "fp16"  # no --precision: the bundle's own
    served.close()
    with pytest.raises(ParameterError, match="is fp16, not fp32"):
        Station(StationConfig(tmp_path / "other", backbone="tiny", weights=str(fp16), input_size=32, precision="fp32"))


def test_an_onnx_file_with_the_sidecar_beside_it_runs_as_a_bundle(bundle, tmp_path):
    with zipfile.ZipFile(bundle) as archive:
        (tmp_path / "a.onnx").write_bytes(archive.read("model.onnx"))
        sidecar = archive.read("bundle.json")
    images = [colour_image("red", 1)]

    with pytest.raises(WeightsError, match="a.onnx.json"):
        build_backbone("tiny", weights=tmp_path / "a.onnx")
    (tmp_path / "a.onnx.json").write_bytes(sidecar)
    loose = build_backbone("tiny", weights=tmp_path / "a.onnx")

    assert loose.fingerprint == BundleBackbone(bundle).fingerprint
    assert np.array_equal(loose.embed(images), BundleBackbone(bundle).embed(images))
    (tmp_path / "a.onnx").write_bytes(b"\0" + (tmp_path / "a.onnx").read_bytes())
    with pytest.raises(ModelFileError, match="sha256"):
        build_backbone("tiny", weights=tmp_path / "a.onnx")
