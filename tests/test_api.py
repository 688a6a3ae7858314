import importlib
import inspect
import pkgutil
import types

import pytest

import dae


@pytest.fixture(scope="module")
def every_submodule_imported():
    # Importing a submodule binds it on the package: this once turned dae.train into an uncallable module.
    for info in pkgutil.walk_packages(dae.__path__, "dae."):
        if info.name != "dae.__main__":
            importlib.import_module(info.name)


@pytest.mark.parametrize("name", sorted(set(dae.__all__) - {"__version__"}))
def test_public_names_stay_callable_after_every_module_is_imported(every_submodule_imported, name):
    value = getattr(dae, name)
    assert callable(value)
    assert getattr(dae, name) is value  # the same object however often it is looked up


@pytest.mark.parametrize("name", ["train", "evaluate"])
def test_train_and_evaluate_are_callable_modules(every_submodule_imported, name, monkeypatch):
    module = importlib.import_module(f"dae.{name}")
    assert dae.__dict__[name] is module or getattr(dae, name) is module
    function = getattr(module, name)
    assert inspect.signature(getattr(dae, name)) == inspect.signature(function)
    # Calling the module runs the function as it is now, so patching the function (or the module's
    # helpers, by object or by dotted name) works as for any module.
    monkeypatch.setattr(f"dae.{name}.{name}", lambda *a, **k: ("called", a, k))
    assert getattr(dae, name)(1, x=2) == ("called", (1,), {"x": 2})
    from dae import evaluate, train

    assert isinstance(train, types.ModuleType) and isinstance(evaluate, types.ModuleType)
    assert train.select_device and evaluate.format_table  # the modules' other contents stay reachable


@pytest.mark.parametrize("name", ["train", "evaluate"])
def test_help_on_a_callable_module_documents_its_function(every_submodule_imported, name):
    import pydoc

    function = getattr(importlib.import_module(f"dae.{name}"), name)
    text = pydoc.render_doc(getattr(dae, name), renderer=pydoc.plaintext)
    summary = inspect.getdoc(function).splitlines()[0]
    assert f"dae.{name} - {summary}" in text  # help()'s NAME line is the function's summary
    assert f"dae.{name}{inspect.signature(function)}" in text
    assert "Example:" in text


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dae.nope  # noqa: B018
