import importlib
import pkgutil
import types

import pytest

import dae


@pytest.fixture(scope="module")
def every_submodule_imported():
    # Importing a submodule binds it on the package; this is what shadowed dae.train and dae.evaluate.
    for info in pkgutil.walk_packages(dae.__path__, "dae."):
        if info.name != "dae.__main__":
            importlib.import_module(info.name)


@pytest.mark.parametrize("name", sorted(set(dae.__all__) - {"__version__"}))
def test_public_names_stay_what_they_are_after_every_module_is_imported(every_submodule_imported, name):
    value = getattr(dae, name)
    assert not isinstance(value, types.ModuleType)
    assert callable(value)
    assert getattr(dae, name) is value  # the same object however often it is looked up


def test_the_modules_behind_train_and_evaluate_stay_importable():
    from dae.evaluate import format_table
    from dae.train import select_device

    assert callable(format_table) and callable(select_device)
    assert importlib.import_module("dae.train").train is dae.train
    assert importlib.import_module("dae.evaluate").evaluate is dae.evaluate


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dae.nope  # noqa: B018
