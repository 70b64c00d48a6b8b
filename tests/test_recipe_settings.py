"""The benchmark scripts' ``--set=name=value`` parser (experiments/recipe_settings.py)."""

import importlib.util
import os

import pytest

from sqjl_tf import Recipe

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                     "recipe_settings.py")
_spec = importlib.util.spec_from_file_location("recipe_settings", _PATH)
recipe_settings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe_settings)


def test_each_setting_takes_its_fields_type():
    recipe = recipe_settings.parse(["finetune_weight_decay=0.5", "finetune_decay_scope=normalized",
                                    "finetune_train_centres=TRUE", "projections_per_epoch=6"])
    assert recipe == Recipe(finetune_weight_decay=0.5, finetune_decay_scope="normalized",
                            finetune_train_centres=True, projections_per_epoch=6)


@pytest.mark.parametrize("pairs, message", [
    (["nope=1"], "Received: 'nope=1'. Expected name=value with a name of admm_lr"),
    (["rho="], "Received: 'rho='. Expected name=value"),
    (["rho=big"], "Expected a value of type float for rho."),
    (["finetune_train_centres=1"], "Expected a value of type bool"),
    (["finetune_decay_scope=bn"], "`finetune_decay_scope`. Received: 'bn'. Expected one of all, "
                                  "normalized"),
    ([], "Expected one or more name=value changes"),
])
def test_bad_settings_are_refused_by_name(pairs, message):
    with pytest.raises(ValueError) as err:
        recipe_settings.parse(pairs)
    assert message in str(err.value)
