"""Shared fixtures: fake datasets in the real on-disk formats (see fakedata.py), written once.

Session-scoped, so one per test process (pytest-xdist worker); tests read them and never
write into them.
"""

import pytest

import fakedata


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A learnable 28x28 10-class Fashion-MNIST as gzip IDX files: 256 train, 128 test images."""
    return fakedata.write_fashion_mnist(str(tmp_path_factory.mktemp("fashion_mnist")))


@pytest.fixture(scope="session")
def tiny_fashion_mnist_dir(tmp_path_factory):
    """The same with 64 train and 32 test images, for runs that fail or stop early."""
    return fakedata.write_fashion_mnist(str(tmp_path_factory.mktemp("tiny_fashion_mnist")),
                                        train=64, test=32)
