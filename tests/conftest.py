"""Shared fixtures: fake datasets in the real on-disk formats (see fakedata.py), written once.

Session-scoped, so one per test process (pytest-xdist worker); tests read them and never
write into them.
"""

import collections
import importlib.util
import os
import sys

import pytest

import fakedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    """The files with the most ``slow`` tests first, each file's tests in their order.

    pytest-xdist hands whole files (``--dist loadfile``) to its workers in this order
    (``--no-loadscope-reorder``): the longest work is started first, so that no worker is
    left alone with a long file at the end.
    """
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: the order is otherwise kept


@pytest.fixture(scope="session")
def run_py():
    """run.py as a module, imported once per process: its absl flags are process-wide."""
    name = "_sqjl_run_py"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "run.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def run_main(run_py):
    """run.py's command in this process: ``run_main(args)`` returns its exit status.

    As ``app.run`` calls ``main``: 0 when it returns, else the status it exits with.
    absl's ``FLAGS`` are process-wide: each call resets them before parsing.
    """

    def call(args):
        run_py.FLAGS.unparse_flags()
        try:
            run_py.main(run_py._parse_flags(["run.py", *args]))
        except SystemExit as stop:
            return stop.code
        return 0

    return call


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A learnable 28x28 10-class Fashion-MNIST as gzip IDX files: 256 train, 128 test images."""
    return fakedata.write_fashion_mnist(str(tmp_path_factory.mktemp("fashion_mnist")))


@pytest.fixture(scope="session")
def tiny_fashion_mnist_dir(tmp_path_factory):
    """The same with 64 train and 32 test images, for runs that fail or stop early."""
    return fakedata.write_fashion_mnist(str(tmp_path_factory.mktemp("tiny_fashion_mnist")),
                                        train=64, test=32)


@pytest.fixture
def admm_callbacks(monkeypatch):
    """The ``ADMMCallback``s that ``sqjl_tf.compress`` makes in this test, in order."""
    from sqjl_tf import pipeline

    made = []

    class Recorded(pipeline.ADMMCallback):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pipeline, "ADMMCallback", Recorded)
    return made
