"""Tests of sqjl_tf.data on tiny fake datasets written to tmp_path (no network)."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

import fakedata

from sqjl_tf import data
from sqjl_tf.data import cifar, mnist


def _write(path, payload: bytes, gz: bool):
    if gz:
        path = str(path) + ".gz"
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def _write_mnist(folder, n_train=10, n_test=6, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {prefix: (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
                    (np.arange(n) % 10).astype(np.uint8))
           for prefix, n in (("train", n_train), ("t10k", n_test))}
    fakedata.write_mnist_like(folder, out, gz)
    return out


@pytest.fixture(autouse=True)
def _no_system_dirs(monkeypatch):
    """Make the tests independent of Debian's dataset-fashion-mnist."""
    monkeypatch.setattr(mnist, "SYSTEM_DATA_DIRS", {})


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx(tmp_path, gz):
    for array in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 7, 1 << 20], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    ):
        path = _write(tmp_path / f"a{array.dtype}", fakedata.idx_bytes(array), gz)
        out = data.read_idx(path)
        assert out.dtype == array.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, array)


def test_read_idx_invalid(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="`path`"):
        data.read_idx(bad)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(fakedata.idx_bytes(np.zeros((3, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match="shape"):
        data.read_idx(truncated)
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "missing")


def test_read_idx_gzip_bombs_are_refused_before_inflating(tmp_path):
    header = bytes([0, 0, 8, 1]) + np.array([4_000_000_000], ">u4").tobytes()
    claims_too_much = tmp_path / "claims.gz"  # 4 GB announced by a 1 KB file
    claims_too_much.write_bytes(gzip.compress(header + bytes(1 << 16)))
    with pytest.raises(ValueError, match="announces 4000000008 bytes"):
        data.read_idx(claims_too_much)
    small = bytes([0, 0, 8, 1]) + np.array([1000], ">u4").tobytes()
    carries_more = tmp_path / "more.gz"  # 1000 bytes announced, 64 MB inside
    carries_more.write_bytes(gzip.compress(small + bytes(1 << 26)))
    with pytest.raises(ValueError, match="more data than its header"):
        data.read_idx(carries_more)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(fakedata.idx_bytes(np.arange(5000, dtype=np.uint8) % 7))[:-20])
    with pytest.raises(ValueError, match="damaged gzip"):
        data.read_idx(cut)


@pytest.mark.parametrize(
    "name, gz, sub", [("mnist", True, ""), ("fashion_mnist", False, "FashionMNIST/raw")]
)
def test_mnist_like(tmp_path, name, gz, sub):
    raw = _write_mnist(tmp_path / sub if sub else tmp_path, gz=gz)
    ds, info = data.load_dataset(name, tmp_path, batch_size=4, split="test")
    assert (info.num_classes, info.input_shape, info.num_examples) == (10, (28, 28, 1), 6)
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 28, 28, 1), (2, 28, 28, 1)]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    # The test split is not shuffled: same order as the files.
    np.testing.assert_array_equal(labels, raw["t10k"][1])
    mean, std = mnist.MEAN[name][0], mnist.STD[name][0]
    expected = (raw["t10k"][0][..., None] / 255.0 - mean) / std
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


def test_mnist_reference_normalisation():
    assert mnist.MEAN["mnist"] == (0.1307,) and mnist.STD["mnist"] == (0.3081,)


def test_shuffle_seed_limit_drop_remainder(tmp_path):
    raw = _write_mnist(tmp_path, n_train=10)

    def labels_of(ds):
        return np.concatenate([b[1] for b in ds.as_numpy_iterator()])

    ds, info = data.load_dataset("mnist", tmp_path, batch_size=3, split="train", seed=7)
    first = labels_of(ds)
    assert sorted(first) == sorted(raw["train"][1])
    ds2, _ = data.load_dataset("mnist", tmp_path, batch_size=3, split="train", seed=7)
    np.testing.assert_array_equal(labels_of(ds2), first)  # Deterministic when seeded.
    # The second epochs agree too (reshuffled each epoch, deterministically).
    np.testing.assert_array_equal(labels_of(ds), labels_of(ds2))
    ds, info = data.load_dataset("mnist", tmp_path, batch_size=3, drop_remainder=True, limit=8)
    assert info.num_examples == 8
    assert [b[0].shape[0] for b in ds.as_numpy_iterator()] == [3, 3]
    assert set(labels_of(ds)) <= set(raw["train"][1][:8])
    ds, _ = data.load_dataset("mnist", tmp_path, batch_size=3, shuffle=False)
    np.testing.assert_array_equal(labels_of(ds), raw["train"][1])


def test_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST not found.*train-images-idx3-ubyte"):
        data.load_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as err:
        data.load_dataset("fashion_mnist", str(tmp_path), split="test")
    assert "t10k-images-idx3-ubyte[.gz]" in str(err.value) and str(tmp_path) in str(err.value)


def test_fashion_mnist_system_dir(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "system", n_test=5)
    monkeypatch.setattr(mnist, "SYSTEM_DATA_DIRS", {"fashion_mnist": (str(tmp_path / "system"),)})
    ds, info = data.load_dataset("fashion_mnist", None, batch_size=8, split="test")
    assert info.num_examples == 5 and info.source == str(tmp_path / "system")


def _write_cifar(folder, per_file=3, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    written = {}
    for fname in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, size=per_file, dtype=np.uint8)
        planes = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], planes.reshape(per_file, -1)], axis=1)
        records.tofile(os.path.join(folder, fname))
        written[fname] = (planes.transpose(0, 2, 3, 1), labels)
    return written


def test_read_cifar_bin(tmp_path):
    written = _write_cifar(tmp_path)
    images, labels = data.read_cifar_bin(tmp_path / "test_batch.bin")
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, written["test_batch.bin"][0])
    np.testing.assert_array_equal(labels, written["test_batch.bin"][1])
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="3073"):
        data.read_cifar_bin(tmp_path / "bad.bin")


def test_cifar10(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-bin")
    ds, info = data.load_dataset("cifar10", tmp_path, batch_size=4, split="test")
    assert (info.num_classes, info.input_shape, info.num_examples) == (10, (32, 32, 3), 3)
    images, labels = next(ds.as_numpy_iterator())
    assert images.dtype == np.float32 and labels.dtype == np.int32
    expected = (written["test_batch.bin"][0] / 255.0 - cifar.MEAN) / cifar.STD
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, written["test_batch.bin"][1])

    ds, info = data.load_dataset("cifar10", tmp_path, batch_size=4, split="train", seed=3)
    assert info.num_examples == 15
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 4 and batches[-1][0].shape == (3, 32, 32, 3)
    train_labels = np.concatenate([b[1] for b in batches])
    all_labels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert sorted(train_labels) == sorted(all_labels)
    # Augmented (cropped/flipped) images stay within the normalised [0, 1] range;
    # zero padding shows up as the normalised black value.
    images = np.concatenate([b[0] for b in batches])
    low = (0 - np.asarray(cifar.MEAN)) / cifar.STD
    high = (1 - np.asarray(cifar.MEAN)) / cifar.STD
    assert np.all(images >= low - 1e-5) and np.all(images <= high + 1e-5)
    # Same seed, same augmentation.
    again, _ = data.load_dataset("cifar10", tmp_path, batch_size=4, split="train", seed=3)
    np.testing.assert_array_equal(next(again.as_numpy_iterator())[0], batches[0][0])


def test_cifar10_missing(tmp_path):
    _write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3.bin")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found.*data_batch_1.bin"):
        data.load_dataset("cifar10", tmp_path)
    ds, info = data.load_dataset("cifar10", tmp_path, split="test")  # Test split still complete.
    assert info.num_examples == 3


def _write_image_tree(root, classes=("n01", "n02", "n03"), per_class=2, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = os.path.join(root, split, cls)
            os.makedirs(folder)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
                jpeg = tf.io.encode_jpeg(pixels).numpy()
                ext = ".JPEG" if i % 2 == 0 else ".jpg"
                with open(os.path.join(folder, f"img{i}{ext}"), "wb") as f:
                    f.write(jpeg)
        with open(os.path.join(root, split, classes[0], "notes.txt"), "w") as f:
            f.write("not an image")


def test_imagenet_folder(tmp_path):
    _write_image_tree(tmp_path)
    ds, info = data.load_dataset("imagenet", tmp_path, batch_size=4, split="val",
                                 image_size=32, resize_size=36)
    assert (info.num_classes, info.input_shape, info.num_examples) == (3, (32, 32, 3), 6)
    assert info.split == "val"
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 32, 32, 3), (2, 32, 32, 3)]
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    assert batches[0][0].dtype == np.float32 and labels.dtype == np.int32
    ds, info = data.load_dataset("imagenet", tmp_path, batch_size=3, split="train", seed=0,
                                 drop_remainder=True)
    images, labels = next(ds.as_numpy_iterator())
    assert images.shape == (3, 224, 224, 3)
    assert set(labels) <= {0, 1, 2}
    low = (0 - np.asarray(data.imagenet.MEAN)) / data.imagenet.STD
    high = (1 - np.asarray(data.imagenet.MEAN)) / data.imagenet.STD
    assert np.all(images >= low - 1e-4) and np.all(images <= high + 1e-4)
    assert len(list(ds)) == 2


def test_imagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageNet not found.*val/<class>/\*\.JPEG"):
        data.load_dataset("imagenet", tmp_path, split="validation")


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="Invalid value for argument `name`. Received: 'foo'"):
        data.load_dataset("foo", tmp_path)
    with pytest.raises(ValueError, match="`split`"):
        data.load_dataset("mnist", tmp_path, split="dev")
    with pytest.raises(ValueError, match="`batch_size`"):
        data.load_dataset("mnist", tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="`limit`"):
        data.load_dataset("mnist", tmp_path, limit=-1)
    assert data.available_datasets() == ("cifar10", "fashion_mnist", "imagenet", "mnist")
