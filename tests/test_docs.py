"""The docstring examples that stand alone run as written and print what they say."""

import doctest
import importlib

import pytest

# Examples that need a trained run, a photo or a network (runs/demo, photos/) are illustrations; these are
# the self-contained ones, so a wrong printed value (as idx_bytes and estimate_sigma once had) fails here.
RUNNABLE = [
    "dae.baselines.estimate_sigma",
    "dae.data.datasets.ImageDataset",
    "dae.data.datasets.load_images",
    "dae.data.idx.idx_bytes",
    "dae.data.idx.write_idx",
    "dae.data.noise.Block",
    "dae.data.noise.Compose",
    "dae.data.noise.Gaussian",
    "dae.data.noise.Noise",
    "dae.data.noise.add_noise",
    "dae.data.noise.parse_noise",
    "dae.metrics.mse",
    "dae.metrics.psnr",
    "dae.metrics.ssim",
    "dae.models.create_model",
    "dae.models.dncnn.dncnn",
    "dae.models.fc.fc",
    "dae.models.strided.strided",
    "dae.models.transpose.transpose",
    "dae.models.unet.unet",
    "dae.models.unpool.unpool",
    "dae.models.upsample.upsample",
    "dae.recipes.get_recipe",
    "dae.registry.Registry",
]


@pytest.mark.parametrize("name", RUNNABLE)
def test_docstring_example_runs_as_written(name, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DAE_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)  # examples that write a file write it here
    module_name, _, attr = name.rpartition(".")
    module = importlib.import_module(module_name)
    tests = [
        t for t in doctest.DocTestFinder().find(getattr(module, attr), name, module=module) if t.examples
    ]
    assert tests, f"{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
