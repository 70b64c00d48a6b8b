"""Loaders bound what a file makes them allocate (issue #20, "Loaders trust the file").

Every crafted file below declares far more than its size can hold; loading it
must raise a ValueError before allocating what it declares. Each group of
files is loaded in one child process (TensorFlow and NumPy allocate outside
Python, so only the process's peak resident memory tells): the child reports
its peak after each file and when it is done, as Linux's ``VmHWM`` (the peak of
its own image: ``ru_maxrss`` would count the test process's too, which a child
started by fork or vfork and exec inherits). What a loader may add to the
child's peak after TensorFlow, Keras and sqjl_tf are imported is bounded
(256 MiB); the whole child stays under 1 GiB (the imports alone peak at ~0.6 GiB).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import types
import zipfile
import zlib

import keras
import numpy as np
import pytest
from fakedata import crafted_checkpoint

from sqjl_tf import checkpoint
from sqjl_tf.export import compressed as fmt
from sqjl_tf.export import load_compressed, save_compressed
from sqjl_tf.models import convert

_PEAK_KIB = 1 << 20  # 1 GiB: the whole child
_GROWTH_KIB = 1 << 18  # 256 MiB: what loading a file may add to the peak after the imports
_HUGE = 10 ** 6  # a Dense of _HUGE x _HUGE float32 weights: 4 TB


# ---------------------------------------------------------------------------
# The child process.
# ---------------------------------------------------------------------------

_CHILD = r'''
import json, resource, sys, time, traceback

def peak_kib():
    try:  # this image's peak; ru_maxrss also holds the parent's, inherited through exec
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import keras, tensorflow  # noqa: F401 - the imports' peak is the baseline
import sqjl_tf.checkpoint, sqjl_tf.export, sqjl_tf.models.convert  # noqa: F401
print(json.dumps({"baseline_kib": peak_kib()}), flush=True)

def load_sqjl(path):
    from sqjl_tf.export import load_compressed
    load_compressed(path)

def load_checkpoint(path):
    import keras
    from sqjl_tf.checkpoint import load_checkpoint
    load_checkpoint(path, keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))

def load_torch_npz(path):
    from sqjl_tf.models.convert import load_torchvision_alexnet
    load_torchvision_alexnet(None, path)  # the file is refused before the model is used

for name, loader, path in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        globals()[loader](path)
        error, message = None, ""
    except Exception as exc:  # reported to the parent, which asserts on it
        error, message = type(exc).__name__, str(exc)[:2000]
        if not isinstance(exc, ValueError):
            message += "\n" + traceback.format_exc()[-3000:]
    print(json.dumps({"name": name, "error": error, "message": message,
                      "seconds": time.perf_counter() - start,
                      "peak_kib": peak_kib()}), flush=True)
print(json.dumps({"final_peak_kib": peak_kib()}), flush=True)
'''


def _load_in_child(cases, tmp_path):
    """Loads ``[(name, loader, path)]`` in one child; returns its reports and peak (KiB)."""
    out_path = tmp_path / "child.out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    with open(out_path, "wb") as out:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps([[n, l, str(p)] for n, l, p in cases])],
            stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300,
        )
    text = out_path.read_text(errors="replace")
    assert child.returncode == 0, text[-5000:]
    reports, baseline, peak = {}, None, None
    for line in text.splitlines():
        if line.startswith('{"baseline_kib"'):
            baseline = json.loads(line)["baseline_kib"]
        if line.startswith('{"final_peak_kib"'):
            peak = json.loads(line)["final_peak_kib"]
        if line.startswith('{"name"'):
            report = json.loads(line)
            reports[report["name"]] = report
    assert baseline is not None and peak is not None, text[-5000:]
    for report in reports.values():
        report["growth_kib"] = report["peak_kib"] - baseline
    assert set(reports) == {name for name, _, _ in cases}, text[-5000:]
    return reports, peak


def _assert_refused(report, needle):
    assert report["error"] == "ValueError", report["message"]
    assert "Invalid value for argument `" in report["message"], report["message"]
    assert needle in report["message"], report["message"]
    assert report["growth_kib"] < _GROWTH_KIB and report["peak_kib"] < _PEAK_KIB, report
    assert report["seconds"] < 30, report


# ---------------------------------------------------------------------------
# Crafted .sqjl files.
# ---------------------------------------------------------------------------


def _sqjl_bytes(arch: bytes, tables: bytes) -> bytes:
    """A well-formed file (magic, length, CRC) around a zlib'd architecture and the tables."""
    body = struct.pack("<I", len(arch)) + arch + tables
    prefix = fmt._PREFIX.pack(fmt.MAGIC, fmt.FORMAT_VERSION, 0, len(body))
    crc = zlib.crc32(body, zlib.crc32(prefix)) & 0xFFFFFFFF
    return prefix + body + fmt._CHECKSUM.pack(crc)


def _split_sqjl(data: bytes):
    """The architecture config and the raw tables (kernels, other weights) of a file."""
    (arch_len,) = struct.unpack_from("<I", data, fmt._PREFIX.size)
    start = fmt._PREFIX.size + 4
    config = json.loads(zlib.decompress(data[start:start + arch_len]))
    return config, data[start + arch_len:-fmt._CHECKSUM.size]


def _inflate(config, old_in, old_units):
    """``config`` with every input width ``old_in`` and Dense width ``old_units`` made huge."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "units" and value == old_units:
                value = _HUGE
            elif key in ("batch_shape", "build_input_shape", "input_shape") and value in (
                [None, old_in], [old_in]
            ):
                value = value[:-1] + [_HUGE]
            else:
                value = _inflate(value, old_in, old_units)
            out[key] = value
        return out
    if isinstance(config, list):
        return [_inflate(v, old_in, old_units) for v in config]
    return config


def _zlib_json(config) -> bytes:
    return zlib.compress(json.dumps(config).encode(), 9)


def _sqjl_cases(folder):
    """``[(name, loader, path)]``: a valid .sqjl and the crafted ones, written in ``folder``."""
    cases = []

    def add(name, data):
        path = folder / f"{name}.sqjl"
        path.write_bytes(data)
        cases.append((name, "load_sqjl", path))

    # A valid file: the child loads it (the loader does not refuse everything).
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
    save_compressed(model, folder / "valid.sqjl")
    cases.append(("valid", "load_sqjl", folder / "valid.sqjl"))
    config, tables = _split_sqjl((folder / "valid.sqjl").read_bytes())

    # The architecture declares a 4 TB Dense; the file's tables say (4, 3).
    add("inflated_dense", _sqjl_bytes(_zlib_json(_inflate(config, 4, 3)), tables))

    # The tables agree with the architecture: a 4 TB kernel of no nonzero (0 bytes of payload).
    nobias = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False)])
    huge = _inflate(json.loads(fmt._architecture_json(nobias)), 4, 3)
    record = fmt._dims((_HUGE, _HUGE)) + fmt._KERNEL_TAIL.pack(
        1, 0, 0, int(fmt.PositionEncoding.FIXED), 0, 0
    )
    add("huge_kernel_table", _sqjl_bytes(_zlib_json(huge), struct.pack("<I", 1) + record
                                         + struct.pack("<I", 0)))

    # 256 MiB of zlib'd architecture in 256 KB.
    packer, chunk = zlib.compressobj(9), b" " * (1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(256)) + packer.flush()
    add("architecture_bomb", _sqjl_bytes(bomb, tables))

    # JSON nested deeper than Python's recursion limit.
    add("deep_json", _sqjl_bytes(zlib.compress(b"[" * 200_000 + b"]" * 200_000, 9), tables))

    # A Sequential of 2,000 ReLU layers in a few hundred bytes (Keras rebuilds it per layer).
    relu = {"module": "keras.layers", "class_name": "ReLU", "config": {}}
    deep = json.loads(json.dumps(config))
    deep["config"]["layers"] += [relu] * 2000
    add("many_layers", _sqjl_bytes(_zlib_json(deep), tables))

    # Not a model at all: a list.
    add("not_a_model", _sqjl_bytes(_zlib_json([[]] * 1000), tables))
    return cases


@pytest.fixture(scope="module")
def child_reports(tmp_path_factory):
    """Every file of both groups loaded in one child (TensorFlow starts once there).

    Returns ``({"sqjl": reports, "npz": reports, "checkpoint": reports}, the child's peak
    in KiB)``.
    """
    groups = {"sqjl": _sqjl_cases(tmp_path_factory.mktemp("sqjl")),
              "npz": _npz_cases(tmp_path_factory.mktemp("npz")),
              "checkpoint": _checkpoint_cases(tmp_path_factory.mktemp("checkpoint"))}
    cases = [(f"{group}/{name}", loader, path) for group, items in groups.items()
             for name, loader, path in items]
    reports, peak = _load_in_child(cases, tmp_path_factory.mktemp("child"))
    return {group: {name.split("/", 1)[1]: report for name, report in reports.items()
                    if name.startswith(group + "/")} for group in groups}, peak


@pytest.fixture(scope="module")
def sqjl_reports(child_reports):
    reports, peak = child_reports
    return reports["sqjl"], peak


@pytest.fixture(scope="module")
def npz_reports(child_reports):
    reports, peak = child_reports
    return reports["npz"], peak


@pytest.fixture(scope="module")
def checkpoint_reports(child_reports):
    reports, peak = child_reports
    return reports["checkpoint"], peak


@pytest.mark.parametrize(
    "name, needle",
    [
        ("inflated_dense", "has shape (4, 3) in the file but (1000000, 1000000)"),
        ("huge_kernel_table", "more than a file of"),
        ("architecture_bomb", "unpacks to over"),
        ("deep_json", "RecursionError"),
        ("many_layers", "Sequential of 2002 layers"),
        ("not_a_model", "not a Keras model"),
    ],
)
def test_crafted_sqjl_is_refused_within_bounded_memory(sqjl_reports, name, needle):
    reports, _ = sqjl_reports
    _assert_refused(reports[name], needle)


def test_valid_sqjl_loads_in_the_child_within_bounded_memory(sqjl_reports):
    reports, peak = sqjl_reports
    assert reports["valid"]["error"] is None, reports["valid"]["message"]
    assert peak < _PEAK_KIB, peak


def test_inflated_architecture_is_refused_in_process_and_leaves_nothing_pending(tmp_path):
    """A refused model's variables are never allocated, now or by a later stateless scope."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    save_compressed(model, tmp_path / "ok.sqjl")
    config, tables = _split_sqjl((tmp_path / "ok.sqjl").read_bytes())
    bad = tmp_path / "bad.sqjl"
    bad.write_bytes(_sqjl_bytes(_zlib_json(_inflate(config, 4, 3)), tables))
    before = len(fmt._pending_variables())
    with pytest.raises(ValueError, match=r"Invalid value for argument `path`.*bad\.sqjl"):
        load_compressed(bad)
    assert len(fmt._pending_variables()) == before
    with keras.StatelessScope():
        pass  # would allocate 4 TB if the refused model's variables were still pending
    loaded = load_compressed(tmp_path / "ok.sqjl")
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_save_refuses_an_architecture_load_would_refuse(monkeypatch, tmp_path):
    monkeypatch.setattr(fmt, "_MAX_ARCHITECTURE", 100)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="bytes of JSON"):
        save_compressed(model, tmp_path / "m.sqjl")
    assert not (tmp_path / "m.sqjl").exists()


# ---------------------------------------------------------------------------
# Crafted .npz files (torchvision state dicts saved by NumPy).
# ---------------------------------------------------------------------------


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _huge_npy() -> bytes:
    """An array header declaring 10**12 float32 (4 TB), then 64 bytes."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12,)}
    )
    return member.getvalue() + b"\0" * 64


def _write_npz(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("metadata.npy", _npy(np.frombuffer(
            json.dumps({"format": "sqjl_tf.checkpoint/1", "num_model_weights": 2}).encode(),
            np.uint8)))
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npz_cases(folder):
    """``[(name, loader, path)]``: the crafted .npz files, in ``folder``."""
    cases = []

    def add(name, path, loader="load_torch_npz"):
        cases.append((name, loader, path))

    huge = {"model/0.npy": _huge_npy()}
    add("huge_stored", _write_npz(folder / "huge_stored.npz", huge))
    add("huge_deflated", _write_npz(folder / "huge_deflated.npz", huge, zipfile.ZIP_DEFLATED))
    # np.load reads a member as an array when it starts with the .npy magic, whatever its name.
    add("huge_no_suffix", _write_npz(folder / "huge_no_suffix.npz", {"model/0": _huge_npy()}))
    add("huge_torch_npz", _write_npz(folder / "huge.torch.npz", huge))
    add("bzip2_member", _write_npz(folder / "bz2.npz", {"model/0.npy": _npy(np.zeros(3))},
                                   zipfile.ZIP_BZIP2))
    # A deflate bomb: a consistent header and 512 MiB of zeros in ~0.5 MB.
    bomb = folder / "bomb.npz"
    _write_npz(bomb, {})
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("model/0.npy", "w") as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 27,)}
            )
            member.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(512):
                member.write(zeros)
    assert bomb.stat().st_size < 4 << 20
    add("deflate_bomb", bomb)
    return cases


@pytest.mark.parametrize(
    "name, needle",
    [
        ("huge_stored", "declares shape (1000000000000,)"),
        ("huge_deflated", "declares shape (1000000000000,)"),
        ("huge_no_suffix", "'model/0' declares shape (1000000000000,)"),
        ("huge_torch_npz", "declares shape (1000000000000,)"),
        ("bzip2_member", "compression method"),
        ("deflate_bomb", "unpacks to"),
    ],
)
def test_crafted_npz_is_refused_within_bounded_memory(npz_reports, name, needle):
    reports, _ = npz_reports
    _assert_refused(reports[name], needle)


# ---------------------------------------------------------------------------
# Checkpoints (tf.train.Checkpoint).
# ---------------------------------------------------------------------------


def _dense():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def _checkpoint_cases(folder):
    """``[(name, loader, path)]``: a valid checkpoint and a crafted one, in ``folder``."""
    return [("valid", "load_checkpoint",
             os.path.dirname(checkpoint.save_checkpoint(str(folder / "valid.ckpt"), _dense()))),
            ("huge_declared", "load_checkpoint",
             crafted_checkpoint(folder / "crafted.ckpt", _dense()))]


def test_crafted_checkpoint_is_refused_within_bounded_memory(checkpoint_reports):
    reports, _ = checkpoint_reports
    _assert_refused(reports["huge_declared"], "its index declares 1.678e+13 bytes of tensors")


def test_valid_checkpoint_loads_in_the_child_within_bounded_memory(checkpoint_reports):
    reports, peak = checkpoint_reports
    assert reports["valid"]["error"] is None, reports["valid"]["message"]
    assert peak < _PEAK_KIB, peak


def test_bad_checkpoint_metadata_is_a_value_error(tmp_path):
    prefix = checkpoint.save_checkpoint(str(tmp_path / "latest.ckpt"), _dense())
    with open(prefix + ".json", "w") as f:
        f.write("[" * 100_000)
    with pytest.raises(ValueError, match="Invalid checkpoint: no readable metadata ckpt-1.json"):
        checkpoint.read_metadata(str(tmp_path / "latest.ckpt"))


def test_a_checkpoint_of_another_architecture_is_a_value_error(tmp_path):
    path = checkpoint.save_checkpoint(str(tmp_path / "latest.ckpt"), _dense())
    deeper = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="it holds 2 model weights, the model has 4"):
        checkpoint.load_checkpoint(path, deeper)
    with pytest.raises(ValueError, match="it holds 4 model weights, the model has 2"):
        checkpoint.load_checkpoint(checkpoint.save_checkpoint(str(tmp_path / "deeper.ckpt"),
                                                              deeper), _dense())


# ---------------------------------------------------------------------------
# torch.load.
# ---------------------------------------------------------------------------


def test_torch_load_is_asked_for_weights_only(monkeypatch, tmp_path):
    calls = []

    class _Tensor:
        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return np.ones(2, np.float32)

    def fake_load(path, **kwargs):
        calls.append(kwargs)
        return {"module.classifier.6.bias": _Tensor()}

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=fake_load))
    state = convert._load_state_dict(str(tmp_path / "alexnet.pth"))
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    np.testing.assert_array_equal(state["classifier.6.bias"], np.ones(2, np.float32))
