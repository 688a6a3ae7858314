import json
import pickle

import pytest
import torch

from dae.checkpoint import load_checkpoint, load_model, paths_for, save_checkpoint
from dae.errors import CheckpointError, ResourceError, TrainingError, UsageError
from dae.models import create_model, list_models


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("fc")
    path = save_checkpoint(
        model,
        tmp_path / "m.safetensors",
        config={"seed": 3},
        metrics={"val_psnr": 20.0},
        train_state={"step": 5, "rng": torch.get_rng_state()},
    )
    return model, path


def test_round_trip_identical_outputs(saved):
    model, path = saved
    loaded = load_model(path)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))
    ck = load_checkpoint(path, with_state=True)
    assert ck.record["metrics"]["val_psnr"] == 20.0 and ck.record["config"]["seed"] == 3
    assert ck.state["step"] == 5


def test_loads_from_embedded_record_when_json_missing(saved):
    model, path = saved
    paths_for(path)[2].unlink()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model.eval()(x), load_model(path)(x))


def test_no_temp_files_left(saved):
    _, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json", "m.safetensors", "m.state.pt"]


@pytest.mark.parametrize("keep", [-100, 20])  # cut in the tensors, or inside the header itself
def test_truncated_weights_refused(saved, keep):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="(does|do) not match its manifest .*: truncated or corrupted"):
        load_model(path)


def test_bit_flip_refused(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(path)


# torch warns that the hostile pickle uses protocol 4 before refusing it; the refusal is what is tested.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_that_runs_code_refused(tmp_path, saved):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    _, path = saved
    state_path = paths_for(path)[1]
    evil = pickle.dumps({"x": Evil()})
    # Even with a manifest that matches the evil file, weights_only loading refuses it.
    state_path.write_bytes(evil)
    record_path = paths_for(path)[2]
    record = json.loads(record_path.read_text())
    import hashlib

    record["files"]["state"] = {
        "file": state_path.name,
        "sha256": hashlib.sha256(evil).hexdigest(),
        "bytes": len(evil),
    }
    record_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, with_state=True)
    assert not (tmp_path / "pwned").exists()


def test_pickle_as_weights_refused(tmp_path):
    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_model(p)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x05\x00", b"PK\x03\x04" + b"\xff" * 60, (10**9).to_bytes(8, "little") + b"{}"],
    ids=["empty", "shorter-than-a-header", "zip", "huge-header-length"],
)
def test_file_of_another_kind_refused_without_reading_it_whole(tmp_path, data, traced_peak):
    # Any file's first 8 bytes read as a safetensors header length; a zip's make ~2**64 (was a MemoryError).
    p = tmp_path / "other.safetensors"
    p.write_bytes(data)
    with traced_peak() as peak, pytest.raises(CheckpointError, match="not a dae safetensors checkpoint"):
        load_model(p)
    assert peak[0] < 16 * 2**20  # the declared length (up to ~2**64 bytes) was never allocated


@pytest.mark.parametrize("name", ["m.state.pt", "m.json", "m.safetensors"])
def test_any_file_of_a_generation_names_it(saved, name):
    model, path = saved
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model.eval()(x), load_model(path.with_name(name))(x))


@pytest.mark.parametrize(
    "damage",
    [
        {"files": []},
        {"files": {"weights": "abc"}},
        {"format_version": "2"},
        {"model": ["fc"]},
        {"model": {"name": ["fc"]}},
        {"config": ["x"]},
        {"config": {"train": []}},
        {"format_version": True},
    ],
    ids=[
        "files-a-list",
        "file-entry-a-string",
        "version-a-string",
        "model-a-list",
        "model-name-a-list",
        "config-a-list",
        "config-section-a-list",
        "version-a-bool",
    ],
)
def test_hand_damaged_record_is_a_checkpoint_error(saved, damage):
    _, path = saved
    record_path = paths_for(path)[2]
    record_path.write_text(json.dumps({**json.loads(record_path.read_text()), **damage}))
    with pytest.raises(CheckpointError, match="damaged dae checkpoint record"):
        load_model(path)


def test_foreign_safetensors_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(CheckpointError, match="not a dae"):
        load_model(p)


def test_missing_checkpoint_is_resource_error(tmp_path):
    with pytest.raises(ResourceError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_non_finite_weights_never_written(tmp_path):
    model = create_model("fc")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="non-finite"):
        save_checkpoint(model, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_name_refused(saved):
    _, path = saved
    record_path = paths_for(path)[2]
    record = json.loads(record_path.read_text())
    record["model"]["name"] = "no-such-model"
    record_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="no-such-model"):
        load_model(path)


def test_new_weights_load_when_crash_left_the_old_sidecar(tmp_path):
    """A hard kill between replacing best.safetensors and best.json leaves new weights beside the old record."""
    torch.manual_seed(0)
    old_model, new_model = create_model("fc"), create_model("fc")
    path = save_checkpoint(old_model, tmp_path / "best.safetensors", metrics={"val_psnr": 18.0})
    stale_record = paths_for(path)[2].read_bytes()
    save_checkpoint(new_model, path, metrics={"val_psnr": 19.0})
    paths_for(path)[2].write_bytes(stale_record)  # as if the second rename never happened
    ck = load_checkpoint(path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(ck.model(x), new_model.eval()(x))
    assert ck.record["metrics"]["val_psnr"] == 19.0


@pytest.mark.parametrize("sidecar", ["stale", "missing"])
def test_corrupt_weights_refused_whatever_the_sidecar(tmp_path, sidecar):
    torch.manual_seed(0)
    path = save_checkpoint(create_model("fc"), tmp_path / "best.safetensors")
    record_path = paths_for(path)[2]
    if sidecar == "stale":
        record = json.loads(record_path.read_text())
        record["files"]["weights"]["sha256"] = "0" * 64
        record_path.write_text(json.dumps(record))
    else:
        record_path.unlink()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # in the tensor bytes, not the header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(path)


def test_checkpoint_without_embedded_hash_still_loads(tmp_path):
    """Checkpoints written before the embedded hash: the sidecar is checked, or without one the file loads as is."""
    from safetensors.torch import save as st_save

    torch.manual_seed(0)
    model = create_model("fc")
    path = save_checkpoint(model, tmp_path / "old.safetensors")
    record = json.loads(paths_for(path)[2].read_text())
    del record["tensors_sha256"], record["files"]
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    path.write_bytes(st_save(tensors, metadata={"dae": json.dumps(record)}))
    paths_for(path)[2].unlink()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(load_model(path)(x), model.eval()(x))


@pytest.mark.parametrize("name", list_models())
def test_record_holds_every_constructor_argument(name, tmp_path):
    import inspect

    from dae.models import MODELS

    path = save_checkpoint(create_model(name), tmp_path / "m.safetensors")
    recorded = load_checkpoint(path).record["model"]["kwargs"]
    assert set(recorded) == set(inspect.signature(MODELS.get(name)).parameters)


def test_checkpoint_survives_a_later_change_of_defaults(tmp_path, monkeypatch):
    import functools

    from dae.models import MODELS

    torch.manual_seed(0)
    model = create_model("unet").eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    # A later release makes the blocks shallower by default: the saved network must still come back whole.
    monkeypatch.setitem(MODELS._items, "unet", functools.partial(MODELS.get("unet"), convs=1))
    assert create_model("unet").dae_kwargs["convs"] == 1
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), load_model(path)(x))


@pytest.mark.parametrize("old", range(2))
def test_records_of_earlier_releases_load_under_their_defaults(tmp_path, old):
    from dae.models import MODELS

    defaults = MODELS.get("unet").previous_defaults[old]
    torch.manual_seed(0)
    model = create_model("unet", **defaults).eval()
    model.dae_kwargs = {"in_channels": 1}  # as earlier releases recorded it: only the arguments given
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(RuntimeError):
        create_model("unet").load_state_dict(model.state_dict())  # today's defaults do not fit
    loaded = load_model(path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert {k: loaded.dae_kwargs[k] for k in defaults} == defaults


def test_record_whose_kwargs_are_not_a_mapping_is_refused(tmp_path, monkeypatch):
    model = create_model("fc")
    model.dae_kwargs = [64]  # an edited or foreign record
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="kwargs are not a mapping"):
        load_model(path)


def test_weights_that_fit_no_known_layout_are_refused(tmp_path):
    model = create_model("unet", width=8).eval()
    model.dae_kwargs = {"in_channels": 1}  # an old-style record that hides the width it was built with
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="weights do not fit model 'unet'.*2 earlier default layout"):
        load_model(path)


@pytest.mark.parametrize(
    "device, error, message",
    [
        ("cuda", ResourceError, "CUDA is not available"),  # was torch's AssertionError
        ("bogus", UsageError, "unknown device 'bogus'"),
        (3, UsageError, "device must be a name"),
    ],
)
def test_load_model_names_a_device_it_cannot_use(saved, device, error, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(error, match=message):
        load_model(saved[1], device=device)


def test_load_model_of_something_not_a_path_is_a_usage_error():
    with pytest.raises(UsageError, match="a checkpoint is a path"):
        load_model(None)  # was Path's TypeError


def _rewritten(tmp_path, edit):
    """A checkpoint whose tensors another program changed, with no hash left to catch it (as in a file written
    before dae embedded one)."""
    from safetensors.torch import save as st_save

    torch.manual_seed(0)
    path = save_checkpoint(create_model("fc"), tmp_path / "w.safetensors")
    record = json.loads(paths_for(path)[2].read_text())
    del record["tensors_sha256"], record["files"]
    tensors = {k: edit(v.contiguous().clone()) for k, v in create_model("fc").state_dict().items()}
    path.write_bytes(st_save(tensors, metadata={"dae": json.dumps(record)}))
    paths_for(path)[2].unlink()
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t * float("nan"), "holds NaN or infinite values"),  # loaded, then eval scored nan
        (lambda t: t.fill_(float("inf")), "holds NaN or infinite values"),
        (lambda t: (t * 100).to(torch.int32), "is torch.int32, the model holds torch.float32"),  # was cast
    ],
)
def test_weights_no_denoiser_can_hold_are_refused(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_model(_rewritten(tmp_path, edit))


def test_an_error_in_an_embedded_record_names_the_weights_file(tmp_path):
    from safetensors.torch import save as st_save

    path = tmp_path / "best.safetensors"
    tensors = {k: v.contiguous() for k, v in create_model("fc").state_dict().items()}
    path.write_bytes(st_save(tensors, metadata={"dae": json.dumps({"format": "other"})}))
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert str(e.value).startswith(
        f"{path} is not a dae checkpoint record"
    )  # was best.json, which is not there


def test_a_json_that_belongs_to_no_checkpoint_is_named(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(
        CheckpointError, match=r"results.json is not a dae checkpoint: there is no results.safe"
    ):
        load_model(tmp_path / "results.json")  # was "checkpoint .../results.safetensors does not exist"
    with pytest.raises(ResourceError, match="does not exist"):
        load_model(tmp_path / "missing.json")


def test_a_record_asking_for_a_huge_model_is_refused_before_memory_is_spent(tmp_path, monkeypatch):
    import dae.models

    torch.manual_seed(0)
    model = create_model("strided")
    model.dae_kwargs = {**model.dae_kwargs, "channels": [30000, 30000]}  # an edited record: ~90 GB of weights
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    real = dae.models.create_model
    built = []

    def spy(name, **kwargs):
        m = real(name, **kwargs)
        built.append(next(m.parameters()).device.type)
        return m

    monkeypatch.setattr(dae.models, "create_model", spy)
    with pytest.raises(
        CheckpointError, match=r"weights do not fit model 'strided' \(tensor .* is \[16, 1, 5, 5\]"
    ):
        load_model(path)
    assert built == ["meta"]  # the layout was compared on the meta device; nothing was allocated for it
    monkeypatch.setattr(dae.models, "create_model", real)
    model.dae_kwargs = {**model.dae_kwargs, "channels": [16, 32]}
    assert load_model(save_checkpoint(model, tmp_path / "ok.safetensors")).dae_kwargs["channels"] == [16, 32]


@pytest.mark.parametrize("sidecar", ["{not json", "", "\xff"])
def test_weights_that_vouch_for_themselves_load_past_an_unreadable_sidecar(saved, sidecar):
    """The record embedded in the weights, with their hash, is what a missing or stale sidecar falls back to."""
    model, path = saved
    paths_for(path)[2].write_bytes(sidecar.encode("latin-1"))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model.eval()(x), load_model(path)(x))


def test_an_unreadable_sidecar_beside_damaged_weights_is_still_an_error(saved):
    _, path = saved
    paths_for(path)[2].write_text("{not json")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_model(path)
