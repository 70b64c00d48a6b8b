"""The run folder (RunDir) and the one atomic-write helper, without any training."""

import os

import pytest
from fakedata import fake_checkpoint

from sqjl_tf._files import atomic_path, remove_temporaries, write_json
from sqjl_tf._usage import UsageError
from sqjl_tf.rundir import RunDir


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    path = tmp_path / "final.json"
    write_json(str(path), {"accuracy": 0.9})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(str(path)) as tmp:
            open(tmp, "w").write('{"accura')  # half a file
            raise RuntimeError("killed")
    assert path.read_text() == '{\n "accuracy": 0.9\n}'
    assert os.listdir(tmp_path) == ["final.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with atomic_path(str(target), folder=True) as tmp:
        open(os.path.join(tmp, "new.pb"), "w").write("new")
    assert os.listdir(target) == ["new.pb"]
    assert oct(os.stat(target).st_mode & 0o777) == "0o755"  # not mkdtemp's 0o700
    assert os.listdir(tmp_path) == ["saved_model"]


def test_killed_saves_leftovers_are_removed_files_and_folders(tmp_path):
    (tmp_path / ".tmp-abc-latest.ckpt.npz").write_bytes(b"PK")
    (tmp_path / ".tmp-def-saved_model").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert remove_temporaries(str(tmp_path)) == [".tmp-abc-latest.ckpt.npz",
                                                 ".tmp-def-saved_model"]
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("name, owned", [
    ("config.json", True), ("model_compressed.sqjl", True), ("model_float.keras", True),
    ("epoch_0012.ckpt", True), ("latest.ckpt", True), ("best.ckpt", True), ("stages", True),
    ("epoch_0012.ckpt.npz", True), ("latest.ckpt.npz", True), (".tmp-x-final.json", True),
    ("notes.txt", False), ("model_mine.keras", False), ("epoch_1.ckpt.npz", False),
    ("config.json.bak", False)])
def test_a_run_owns_only_the_files_runs_write(name, owned):
    assert RunDir.owns(name) is owned


def test_resume_compares_identity_arguments_numbers_within_rounding(tmp_path):
    run_dir = RunDir(str(tmp_path))
    run_dir.write_json(RunDir.CONFIG, {"nnz_budget": 0.1, "weightbits": [3, 4]})
    run_dir.check_resume({"nnz_budget": 0.2, "weightbits": (3, 4)}, ("weightbits",))  # not started
    fake_checkpoint(tmp_path)
    run_dir.check_resume({"nnz_budget": 0.1 + 1e-12, "weightbits": (3, 4)},
                         ("nnz_budget", "weightbits"))
    with pytest.raises(UsageError, match="`nnz_budget`. Received: 0.2 on resuming"):
        run_dir.check_resume({"nnz_budget": 0.2, "weightbits": [3, 4]}, ("nnz_budget",))


def test_a_run_of_the_older_single_file_checkpoints_is_refused_not_restarted(tmp_path):
    run_dir = RunDir(str(tmp_path))
    run_dir.write_json(RunDir.CONFIG, {"nnz_budget": 0.1})
    (tmp_path / "latest.ckpt.npz").write_bytes(b"PK")
    with pytest.raises(UsageError, match="checkpoint of an older sqjl_tf \\(latest.ckpt.npz\\)"):
        run_dir.check_resume({"nnz_budget": 0.1}, ("nnz_budget",))
    run_dir.prepare(overwrite=True)  # what the error suggests: --overwrite removes it
    assert os.listdir(tmp_path) == []
