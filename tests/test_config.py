"""TrainConfig: six groups behind the reference's flat flag names, validated once."""

import json
import os
import re
import subprocess
import sys

import pytest

from sqjl_tf.admm import ADMMConfig
from sqjl_tf.config import FLAG_GROUPS, TrainConfig, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flat_names_land_in_their_group_and_come_back_unchanged():
    flags = dict(mode="finetune", lr=0.05, batch_size=64, arch="resnet20", rho=0.2,
                 weightbits=[3, 4], logdir="runs/x", prune=True)
    cfg = TrainConfig.from_flags(**flags)
    assert (cfg.run.mode, cfg.optim.lr, cfg.data.batch_size, cfg.model.arch) == (
        "finetune", 0.05, 64, "resnet20")
    assert (cfg.admm.rho, cfg.admm.mode, cfg.finetune.weightbits) == (0.2, "prune", [3, 4])
    saved = json.loads(json.dumps(cfg.as_flags()))  # as config.json holds it
    assert saved == {**saved, **flags, "quant": False}
    assert TrainConfig.from_flags(**saved).as_flags() == saved
    assert cfg.replace(lr=0.01).optim.lr == 0.01 and cfg.optim.lr == 0.05


def test_run_py_defaults_are_the_configs_defaults():
    """What run.py passes with no flags is what TrainConfig() holds (the CLI and the API agree).

    run.py defines absl flags globally, so it is imported in a process of its own.
    """
    script = ("import json, run; run.FLAGS(['run.py']); "
              "print(json.dumps(run._run_arguments()))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    cli = json.loads(proc.stdout.strip().splitlines()[-1])
    library = json.loads(json.dumps(TrainConfig.from_flags().as_flags()))
    assert set(cli) == set(library) == set(FLAG_GROUPS)
    library["dataset"] = "mnist"  # None in the config: resolved to the reference's default
    assert cli["importance"] is None  # resolved by mode, as below
    parsed = json.loads(json.dumps(TrainConfig.from_flags(**cli).as_flags()))
    assert {k: v for k, v in parsed.items() if library[k] != v} == {}


@pytest.mark.parametrize("flags, expected", [
    (dict(nnz_budget=0.1, bit_budget=4), "magnitude"),  # the reference's ADMM stage: w^2
    (dict(target_rate=100.0), "lamp"),  # compress's recipe
    (dict(target_rate=100.0, importance="magnitude"), "magnitude"),  # given: kept
    (dict(nnz_budget=0.1, importance="fisher"), "fisher"),
])
def test_an_unset_importance_takes_its_modes_default(flags, expected):
    for given in ({"importance": None}, {}):  # run.py's unset flag; an API call without it
        cfg = TrainConfig.from_flags(**{**given, **flags})
        assert cfg.admm.importance == expected
    assert TrainConfig.from_flags(**cfg.as_flags()).admm.importance == expected  # config.json


def test_an_older_config_without_newer_names_reads_with_their_defaults():
    cfg = TrainConfig.from_flags(mode="compress", nnz_budget=0.1, bit_budget=4)
    assert cfg.admm.unit_floor is True and cfg.admm.nnz_budget == 0.1


def test_the_reference_flags_default_prox_off_while_the_library_defaults_it_on():
    assert TrainConfig.from_flags().admm.prox is False and ADMMConfig().prox is True


@pytest.mark.parametrize("flags, needle", [
    (dict(rho_grow=1.1), "Unexpected argument `rho_grow`. Expected one of"),
    (dict(nnz_budget=1.5), "`nnz_budget`. Received: 1.5. Expected a float in (0, 1]"),
    (dict(quant=True, prune=True), "`quant`. Received: True. Expected not both"),
])
def test_what_cannot_be_built_is_a_usage_error(flags, needle):
    with pytest.raises(UsageError, match=re.escape(needle)):
        TrainConfig.from_flags(**flags)
