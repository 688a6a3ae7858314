import importlib
import inspect
import pkgutil
import types

import pytest
import torch

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


def test_dir_offers_the_public_api_and_the_modules():
    import subprocess
    import sys

    # In a fresh interpreter: here, other tests have imported every module already, which binds them on dae.
    code = (
        "import dae; names = dir(dae)\n"
        "assert all(n in names for n in [*dae.__all__, 'baselines', 'errors', 'checks']), names\n"
        "assert 'types' not in names and 'make_callable' not in names\n"
        "assert dae.baselines.BASELINES.names() and dae.errors.UsageError and dae.checks.is_whole"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class _Tiny(torch.nn.Module):
    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)


def _tiny_denoiser(in_channels: int = 1):
    from dae.models._common import SideInfoDenoiser

    class TinyDenoiser(SideInfoDenoiser):
        def __init__(self):
            super().__init__()
            self.in_channels, self.output_kind = in_channels, "logits"
            self.conv = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)

        def _encode(self, x):
            return self.conv(x), {}

        def _decode(self, code, side):
            return code

    return TinyDenoiser()


def _tiny_run(tmp_path, data_dir, **train):
    return {
        "out": str(tmp_path / "run"),
        "model": {"name": "_api_tiny"},
        "data": {"data_dir": str(data_dir), "limit": 256, "val_size": 64},
        "train": {"steps": 2, "precision": "fp32", **train},
    }


def test_resuming_a_model_that_is_not_registered_says_so_and_leaves_the_checkpoints(
    tmp_path, data_dir, monkeypatch
):
    from dae.errors import UsageError
    from dae.models import MODELS

    with monkeypatch.context() as registered:
        registered.setitem(MODELS._items, "_api_tiny", _tiny_denoiser)
        dae.train(_tiny_run(tmp_path, data_dir), progress=False)
    files = sorted((tmp_path / "run" / "checkpoints").iterdir())
    # A new process that has not registered it: not "all generations are damaged".
    run = {"out": str(tmp_path / "run"), "train": {"steps": 4}}
    own = r"unknown model '_api_tiny'.*a model of your own: register it before resuming"
    with pytest.raises(UsageError, match=own):
        dae.train(run, resume=True, progress=False)
    # Without config.yaml the config comes from the checkpoint's record: the same, in its own words.
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(
        UsageError, match=r"unknown model '_api_tiny' \(the run's model\); register it before"
    ):
        dae.train(run, resume=True, progress=False)
    assert sorted((tmp_path / "run" / "checkpoints").iterdir()) == files


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (lambda width=4: _tiny_denoiser(), "its builder takes no in_channels argument"),
        (_Tiny, "its builder returned a _Tiny, not a dae.models.base.Denoiser"),
    ],
)
def test_a_registered_model_that_cannot_train_is_refused_before_the_run_folder(
    builder, message, tmp_path, data_dir, monkeypatch
):
    from dae.errors import UsageError
    from dae.models import MODELS

    monkeypatch.setitem(MODELS._items, "_api_tiny", builder)
    with pytest.raises(UsageError, match=message):
        dae.train(_tiny_run(tmp_path, data_dir), progress=False)
    assert not (tmp_path / "run").exists()


def test_train_gives_the_thread_count_back(tmp_path, data_dir, monkeypatch):
    from dae.models import MODELS

    monkeypatch.setitem(MODELS._items, "_api_tiny", _tiny_denoiser)
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    dae.train(_tiny_run(tmp_path, data_dir, threads=want), progress=False)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("name", ["Flip", "my-noise", "a+b", "x:1", ""])
def test_a_noise_name_the_spec_parser_could_never_read_is_refused_at_registration(name):
    from dae.data.noise import NOISES

    with pytest.raises(ValueError, match="name"):
        NOISES.register(name)
    assert name not in NOISES


def test_evaluate_takes_one_model_as_it_takes_one_checkpoint():
    model = dae.create_model("strided")
    x = torch.rand(4, 1, 28, 28)
    one = dae.evaluate(models=model, images=x, levels=[0.5], verbose=False)
    listed = dae.evaluate(models=[model], images=x, levels=[0.5], verbose=False)
    assert one.records == listed.records and one.records
    for many in (torch.nn.ModuleList([model]), (m for m in [model])):  # collections are still iterated
        assert dae.evaluate(models=many, images=x, levels=[0.5], verbose=False).records == one.records


def test_a_checkpoint_saved_without_a_suffix_loads_by_the_same_name(tmp_path):
    from dae.checkpoint import save_checkpoint

    model = dae.create_model("strided")
    written = save_checkpoint(model, tmp_path / "mine")
    assert written.name == "mine.safetensors"
    loaded = dae.load_model(tmp_path / "mine")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_denoise_files_takes_a_baseline_by_name(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    by_name = dae.denoise_files([tmp_path / "a.png"], "median", tmp_path / "n")
    by_object = dae.denoise_files([tmp_path / "a.png"], dae.create_baseline("median"), tmp_path / "o")
    assert by_name.ok and np.array_equal(
        np.asarray(Image.open(by_name.written[0])), np.asarray(Image.open(by_object.written[0]))
    )
