import shutil

import numpy as np
import pytest

from edgelearn.data import FeatureCache, FolderDataset, class_incremental_steps
from edgelearn.errors import DatasetError, ImageError
from edgelearn.recognizer import Recognizer


def test_folder_splits_and_per_class_sampling(image_folder):
    train, test = FolderDataset.splits(image_folder)
    assert train.classes == ["blue", "green", "red"] and len(train) == 18 and len(test) == 9
    a, b = train.sample_per_class(2, seed=7), train.sample_per_class(2, seed=7)
    assert a.paths == b.paths and a.counts() == {"blue": 2, "green": 2, "red": 2}
    assert train.sample_per_class(2, seed=8).paths != a.paths



def test_a_folder_with_test_is_evaluated_on_test_alone(image_folder):
    assert FolderDataset.test_split(image_folder).root == image_folder / "test"
    assert FolderDataset.test_split(image_folder / "test").classes == ["blue", "green", "red"]  # no split: all
    shutil.rmtree(image_folder / "train")
    only_test = FolderDataset.test_split(image_folder)
    assert only_test.classes == ["blue", "green", "red"] and len(only_test) == 9  # not a class "test"
    with pytest.raises(DatasetError, match="test/ folder but no train/"):
        FolderDataset.splits(image_folder)  # nothing to learn from

def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        FolderDataset.scan(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no images"):
        FolderDataset.scan(tmp_path)
    (tmp_path / "loose.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="own folder"):
        FolderDataset.scan(tmp_path)


@pytest.mark.parametrize("n_steps", [1, 2, 5, 10, 20])
def test_class_incremental_steps_cover_each_example_once(n_steps):
    labels = np.repeat([f"k{i}" for i in range(10)], 8)
    steps = class_incremental_steps(labels, n_steps, seed=3)
    assert len(steps) == n_steps
    flat = np.concatenate(steps)
    assert sorted(flat) == list(range(len(labels)))
    if n_steps <= 10:  # whole classes per step, each class in exactly one step
        owners = [{labels[i] for i in s} for s in steps]
        assert sum(len(o) for o in owners) == 10
    assert [s.tolist() for s in class_incremental_steps(labels, n_steps, seed=3)] == [s.tolist() for s in steps]


def test_feature_cache_avoids_re_embedding(image_folder, tmp_path, monkeypatch):
    rec = Recognizer.create("tiny", learner="ncm", weights="random")
    paths = FolderDataset.scan(image_folder, "train").paths
    cache = FeatureCache(rec.backbone.fingerprint_id, tmp_path / "c")
    first = rec.embed_files(paths, cache=cache)

    import edgelearn.recognizer as module

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image that was cached")

    monkeypatch.setattr(module, "load_image", no_decoding)
    np.testing.assert_array_equal(rec.embed_files(paths, cache=cache), first)
    other = FeatureCache(Recognizer.create("tiny", learner="ncm", weights="random", seed=1).backbone.fingerprint_id,
                         tmp_path / "c")
    assert other.get([]) == {} and other.path != cache.path


def test_embedding_a_corrupt_file_names_it(image_folder):
    bad = image_folder / "train" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rec = Recognizer.create("tiny", learner="ncm", weights="random")
    with pytest.raises(ImageError, match="broken.png"):
        rec.embed_files(FolderDataset.scan(image_folder, "train").paths)


def test_symlinked_class_folders_are_followed_as_by_imagefolder(image_folder, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    for folder in (image_folder / "train").iterdir():
        (linked / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)  # a link back up is read once, not forever
    ds, real = FolderDataset.scan(linked), FolderDataset.scan(image_folder, "train")
    assert ds.labels == real.labels and [p.name for p in ds.paths] == [p.name for p in real.paths]
    assert all(p.is_relative_to(linked) for p in ds.paths)


def test_a_gif_in_a_data_set_is_refused_by_name_not_passed_over(image_folder):
    from PIL import Image

    gif = image_folder / "train" / "red" / "animated.gif"
    Image.new("RGB", (16, 16), "red").save(gif)
    assert gif in FolderDataset.scan(image_folder, "train").paths  # learn and predict both refuse it, by name
    rec = Recognizer.create("tiny", learner="ncm", weights="random")
    with pytest.raises(ImageError, match="animated.gif: not an image file we can read"):
        rec.embed_files([gif])


def test_embedding_can_collect_every_unreadable_file_instead_of_stopping(image_folder):
    paths = list(FolderDataset.scan(image_folder, "train").paths)
    (image_folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (image_folder / "empty.jpg").write_bytes(b"")
    paths[1:1] = [image_folder / "bad.png", image_folder / "empty.jpg"]
    rec = Recognizer.create("tiny", learner="ncm", weights="random")
    unreadable = {}
    X = rec.embed_files(paths, unreadable=unreadable)
    assert sorted(unreadable) == [1, 2] and "bad.png" in unreadable[1] and "empty.jpg: empty file" in unreadable[2]
    assert not X[[1, 2]].any() and X[[0, 3]].any(axis=1).all()
