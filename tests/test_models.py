"""Model zoo and recipes: every registered model (and each option variant) gets shape, backward, code-layer,
encode/decode and save/load tests; recipes must point at real models, losses and noise specs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dae.errors import ResourceError, UsageError
from dae.models import MODELS, create_model, list_models
from dae.recipes import LOSS_NAMES, OPTIMIZER_NAMES, Recipe, get_recipe, list_recipes, recipe_for

# (name, kwargs, documented code shape at 28x28 for a batch of 2)
VARIANTS: list[tuple[str, dict, tuple[int, ...]]] = [
    ("fc", {}, (2, 64)),
    ("fc", {"hidden": [300, 64]}, (2, 64)),
    ("strided", {}, (2, 32, 7, 7)),
    ("strided", {"channels": [16, 8], "kernel_size": 3}, (2, 8, 7, 7)),
    ("upsample", {"channels": "16-8-8"}, (2, 8, 4, 4)),
    ("upsample", {"channels": "32-32-16"}, (2, 16, 4, 4)),
    ("upsample", {"channels": "64-64-32"}, (2, 32, 4, 4)),
    ("upsample", {"channels": "32-32"}, (2, 32, 7, 7)),
    ("transpose", {}, (2, 8, 3, 3)),
    *[
        ("unpool", {"method": m, "activation": a}, (2, 32, 7, 7))
        for m in ("zeros", "nearest", "argmax")
        for a in ("relu", "sigmoid")
    ],
    ("unet", {}, (2, 64, 7, 7)),
    ("unet", {"shuffle": 1, "levels": 2, "width": 16, "norm": "none"}, (2, 64, 7, 7)),
    ("unet", {"shuffle": 2, "levels": 2, "width": 8, "norm": "group"}, (2, 32, 4, 4)),
    ("unet", {"width": 8, "norm": "group", "activation": "silu", "residual": True}, (2, 16, 7, 7)),
    ("dncnn", {}, (2, 32, 28, 28)),
    ("dncnn", {"depth": 4, "width": 8, "norm": "batch"}, (2, 8, 28, 28)),
]
CASES = [
    pytest.param(name, kw, shape, id=f"{name}-{json.dumps(kw, sort_keys=True)}")
    for name, kw, shape in VARIANTS
]
CONV_CASES = [c for c in CASES if c.values[0] != "fc"]


def _batch(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _build(name: str, kw: dict, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **kw, **extra)


def test_every_registered_model_has_variants_here():
    assert sorted({name for name, _, _ in VARIANTS}) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_default_build_forward_and_backward(name):
    model = _build(name, {})
    x = _batch((2, *(model.fixed_size or (1, 28, 28))))
    out = model(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("name", "kw", "code_shape"), CASES)
def test_forward_28x28_shape_kind_and_denoise_range(name, kw, code_shape):
    model = _build(name, kw)
    x = _batch((2, 1, 28, 28))
    out = model(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.output_kind in ("logits", "image")
    den = model.denoise(x)
    assert den.shape == x.shape and den.min() >= 0 and den.max() <= 1


@pytest.mark.parametrize("name", ["fc", "unet"])
def test_denoise_under_bf16_autocast_maps_to_the_image_in_float32(name):
    # A bf16 sigmoid has 8 bits near 1 (steps of 1/256): too coarse for a 16-bit image file.
    model = _build(name, {})
    x = _batch((2, *(model.fixed_size or (1, 28, 28))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        den = model.denoise(x)
    assert den.dtype == torch.float32
    ref = model.denoise(x)
    assert (den - ref).abs().max() < 0.02  # the network's own bf16 error, not a 1/256 output grid


@pytest.mark.parametrize(("name", "kw", "code_shape"), CASES)
def test_an_empty_batch_gives_an_empty_batch(name, kw, code_shape):
    model = _build(name, kw)
    x = _batch((0, 1, 28, 28))
    assert model(x).shape == x.shape and model.denoise(x).shape == x.shape


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("name", "kw", "code_shape"), CONV_CASES)
def test_conv_models_take_odd_sizes_and_channels(name, kw, code_shape, channels):
    model = _build(name, kw, in_channels=channels)
    for h, w in ((37, 53), (5, 7)):
        x = _batch((1, channels, h, w))
        assert model(x).shape == x.shape


@pytest.mark.parametrize(("name", "kw", "code_shape"), CONV_CASES)
def test_wrong_channel_count_is_a_usage_error(name, kw, code_shape):
    model = _build(name, kw)
    with pytest.raises(UsageError, match="in_channels=3"):
        model(_batch((1, 3, 28, 28)))


def test_fc_hidden_may_be_one_size():
    # --model.kwargs.hidden=64 gives an int: once "'int' object is not iterable" with a traceback.
    assert create_model("fc", hidden=64).encoder[1].out_features == 64
    assert create_model("fc", hidden=[64]).encoder[1].out_features == 64


def test_fc_rejects_other_sizes_and_accepts_its_own():
    model = create_model("fc")
    with pytest.raises(UsageError, match="only 1x28x28"):
        model(_batch((1, 1, 37, 53)))
    rgb = create_model("fc", in_channels=3, height=16, width=20, hidden=[32, 8])
    assert rgb(_batch((2, 3, 16, 20))).shape == (2, 3, 16, 20)
    with pytest.raises(UsageError, match="only 3x16x20"):
        rgb(_batch((2, 3, 28, 28)))


@pytest.mark.parametrize(("name", "kw", "code_shape"), CASES)
def test_backward_gives_finite_grads_for_all_params(name, kw, code_shape):
    model = _build(name, kw)
    x = _batch((2, 1, 28, 28))
    model(x).square().mean().backward()
    grads = [(n, p.grad) for n, p in model.named_parameters()]
    assert grads
    for pname, grad in grads:
        assert grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(grad).all(), pname
    assert any(g.abs().sum() > 0 for _, g in grads)


@pytest.mark.parametrize(("name", "kw", "code_shape"), CASES)
def test_code_layer_shape_and_decode_of_encode_is_forward(name, kw, code_shape):
    model = _build(name, kw).eval()
    x = _batch((2, 1, 28, 28))
    with torch.no_grad():
        code = model.encode(x)
        assert tuple(code.shape) == code_shape
        torch.testing.assert_close(model.decode(code), model(x))


@pytest.mark.parametrize("name", [n for n in list_models() if create_model(n).fixed_size is None])
@pytest.mark.parametrize("size", [(27, 31), (1, 1)])
def test_the_code_of_any_size_is_the_one_forward_decodes(name, size):
    # strided and transpose encoded the unpadded input: another code than forward's at 27x31, and an error at 1x1.
    model = create_model(name).eval()
    x = _batch((1, 1, *size))
    with torch.no_grad():
        code = model.encode(x)
        torch.testing.assert_close(code, model.encode(model.pad(x)[0]))
        torch.testing.assert_close(model.decode(code)[..., : size[0], : size[1]], model(x))


def test_fc_encode_of_another_size_is_its_one_line():
    with pytest.raises(UsageError, match="accepts only 1x28x28 inputs"):
        create_model("fc").encode(_batch((1, 1, 27, 31)))


def test_argmax_decode_needs_its_encode_but_other_unpools_do_not():
    argmax = _build("unpool", {"method": "argmax"})
    with pytest.raises(UsageError, match="call encode first"):
        argmax.decode(torch.rand(2, 32, 7, 7))
    code = argmax.encode(_batch((2, 1, 28, 28)))
    assert argmax.decode(code + 0.1).shape == (2, 1, 28, 28)  # an edited code reuses the indices
    with pytest.raises(UsageError):
        argmax.decode(torch.rand(3, 32, 7, 7))  # another batch: the indices do not apply
    for method in ("zeros", "nearest"):
        assert _build("unpool", {"method": method}).decode(torch.rand(2, 32, 7, 7)).shape == (2, 1, 28, 28)
    assert _build("upsample", {}).decode(torch.rand(1, 8, 4, 4)).shape == (1, 1, 32, 32)


def test_unpool_methods_place_values_as_documented():
    from dae.models.unpool import unpool_nearest, unpool_zeros

    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    z = unpool_zeros(x, (4, 3))
    assert z.shape == (1, 1, 4, 3)
    assert z[0, 0].tolist() == [[1, 0, 2], [0, 0, 0], [3, 0, 4], [0, 0, 0]]
    assert unpool_nearest(x, (3, 4))[0, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]]
    # argmax puts the pooled value back exactly where the maximum was
    model = _build("unpool", {"method": "argmax"})
    x = _batch((1, 1, 28, 28))
    _, side = model._encode(x)
    assert len(side["indices"]) == 2 and side["sizes"] == [(28, 28), (14, 14)]


def test_padding_only_where_needed():
    from dae.models.transpose import _exact_size

    transpose = create_model("transpose")
    assert transpose.pad(torch.rand(1, 1, 28, 28))[0].shape == (1, 1, 28, 28)  # the tutorial size is exact
    assert [_exact_size(n, 3) for n in (1, 12, 28, 29, 37, 53)] == [12, 12, 28, 36, 44, 60]
    strided = create_model("strided")
    assert strided.size_multiple == 4
    assert strided.pad(torch.rand(1, 1, 37, 53))[0].shape == (1, 1, 40, 56)


@pytest.mark.parametrize(("name", "kw", "code_shape"), CONV_CASES)
def test_channels_last_matches_contiguous(name, kw, code_shape):
    model = _build(name, kw).eval()
    x = _batch((2, 1, 37, 29))
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "kw", "code_shape"), CONV_CASES)
def test_the_output_follows_a_shift_of_the_input_by_the_grid_and_not_by_less(name, kw, code_shape):
    # Tiled denoising places its tiles on this grid so that each tile pools on the whole image's grid; a grid
    # that is too fine gave tiles on the wrong grid (and results that differ from untiled ones).
    # GroupNorm's statistics span the whole image, so no crop leaves its output alone: the grid is tested
    # without it (it does not change the grid).
    model = _build(name, {**kw, "norm": "none"} if kw.get("norm") == "group" else kw).eval()
    with torch.no_grad():  # weights of one scale throughout: some last layers start at zero, hiding the net
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    g = model.grid
    x = _batch((1, 1, 160, 160))
    inner = slice(64, 80)  # far from every border, beyond the receptive field of these models

    def moved(shift: int) -> torch.Tensor:  # the output at the same pixels, computed from a shifted crop
        return model(x[..., shift:, shift:])[..., inner, inner]

    with torch.no_grad():
        whole = model(x)
        # Relative tolerances: without normalisation these weights reach outputs in the hundreds.
        assert torch.allclose(moved(g), whole[..., 64 + g : 80 + g, 64 + g : 80 + g], rtol=1e-3, atol=1e-5)
        if g > 1:  # and a smaller shift moves the pooling grid
            half = g // 2
            assert not torch.allclose(
                moved(half), whole[..., 64 + half : 80 + half, 64 + half : 80 + half], rtol=1e-2, atol=1e-3
            )


@pytest.mark.parametrize(("name", "kw", "code_shape"), CASES)
def test_save_load_round_trip_gives_identical_outputs(name, kw, code_shape, tmp_path):
    from dae.checkpoint import load_model, save_checkpoint

    model = _build(name, kw)
    # One optimiser step so the weights differ from a fresh build (zero-initialised heads included).
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(_batch((2, 1, 28, 28), seed=1)).square().mean().backward()
    opt.step()
    model.eval()
    json.dumps(model.dae_kwargs)  # kwargs must be JSON-serialisable for the checkpoint record
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.dae_name == name
    x = _batch((2, 1, 28, 28), seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert not torch.equal(create_model(name, **kw).eval()(x), model(x))


@pytest.mark.parametrize("name", list_models())
def test_unknown_argument_is_a_usage_error_naming_the_valid_ones(name):
    with pytest.raises(UsageError, match=rf"model {name}: .*'widht'; its arguments are in_channels, "):
        create_model(name, widht=3)


@pytest.mark.parametrize("name", list_models())
def test_a_model_too_large_for_the_machine_is_refused_before_it_is_built(name, monkeypatch):
    import dae.models

    model = create_model(name)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    monkeypatch.setattr(dae.models, "MAX_MODEL_BYTES", size - 1)
    with pytest.raises(ResourceError, match=rf"model {name} {{}} has [\d,]+ parameters .* a quarter of this"):
        create_model(name)
    with torch.device("meta"):  # a layout check on the meta device costs nothing and is not refused
        assert create_model(name).dae_name == name
    monkeypatch.setattr(dae.models, "MAX_MODEL_BYTES", size)
    assert create_model(name).dae_name == name


def test_a_model_too_large_to_count_is_refused():
    # Was built (torch's 64-bit sizes overflow only for some tensors) and then killed by the kernel: exit 137.
    with pytest.raises(ResourceError, match=r"model unet \{'levels': 30\} is too large to build"):
        create_model("unet", levels=30)


def test_duplicate_registration_raises_and_unknown_name_lists_models():
    with pytest.raises(ValueError, match="already registered"):
        MODELS.register("unet")(lambda **kw: None)
    with pytest.raises(UsageError, match="unet"):
        create_model("no-such-model")


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("unpool", {"method": "bilinear"}, "method"),
        ("unpool", {"activation": "tanh"}, "activation"),
        ("upsample", {"channels": "a-b"}, "channels"),
        ("strided", {"kernel_size": 4}, "kernel_size"),
        ("unet", {"norm": "layer"}, "norm"),
        ("dncnn", {"depth": 1}, "depth"),
        ("fc", {"hidden": []}, "hidden"),
    ],
)
def test_bad_options_are_one_line_usage_errors(name, kw, match):
    with pytest.raises(UsageError, match=match) as info:
        create_model(name, **kw)
    assert name in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("rname", list_recipes())
def test_recipe_references_real_model_loss_optimizer_and_noise(rname):
    from dae.config import build_config
    from dae.data.noise import parse_noise
    from dae.losses import LOSSES

    r = get_recipe(rname)
    assert r.name == rname and r.description
    assert r.model in list_models()
    assert r.loss in LOSSES and r.loss in LOSS_NAMES and r.optimizer in OPTIMIZER_NAMES
    parse_noise(r.noise)
    model = create_model(r.model, **r.model_kwargs)
    assert model(_batch((1, *(model.fixed_size or (1, 28, 28))))).shape[0] == 1
    cfg = build_config(r.to_dict())
    assert (cfg.model.name, cfg.train.loss, cfg.train.batch_size, cfg.train.noise) == (
        r.model,
        r.loss,
        r.batch_size,
        r.noise,
    )
    assert cfg.model.kwargs == dict(r.model_kwargs)


def test_every_model_has_a_default_recipe_and_recipes_are_frozen():
    for name in list_models():
        assert recipe_for(name).model == name
    r = get_recipe("unet-fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lr = 1.0
    with pytest.raises(TypeError):
        r.model_kwargs["width"] = 99
    with pytest.raises(UsageError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(UsageError, match="loss"):
        Recipe("x", "d", "unet", {}, "hinge", "adam", 1e-3, 8, "gaussian:0.5", 1)
    assert {f"tf-unpool-{m}-{a}" for m in ("zeros", "nearest", "argmax") for a in ("relu", "sigmoid")} <= set(
        list_recipes()
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (
            "unpool",
            {"channels": [16, "x"]},
            "channels must be one or more positive integers",
        ),  # was ValueError
        ("strided", {"channels": [16.9, 32]}, "channels must be one or more positive integers"),  # built 16
        ("unet", {"width": True}, "width must be an integer"),  # built a 212-parameter model
        ("unet", {"residual": "maybe"}, "residual must be true or false"),  # built a residual model
        ("unet", {"residual": "1"}, "residual must be true or false"),  # bool("0") is True too
        ("fc", {"hidden": "64"}, r"got '64'"),  # was "got '6'"
    ],
)
def test_model_options_of_the_wrong_kind_are_refused(name, kwargs, message):
    with pytest.raises(UsageError, match=message):
        create_model(name, **kwargs)


@pytest.mark.parametrize(("word", "flag"), [("yes", True), ("On", True), ("no", False), ("off", False)])
def test_a_flag_written_as_yaml_1_1_wrote_it_is_read_as_that_flag(word, flag):
    # `residual: yes` in a config file written for YAML 1.1; dae reads YAML 1.2, where it is a word.
    model = create_model("unet", width=4, residual=word)
    assert model.residual is flag and model.dae_kwargs["residual"] is flag
    with pytest.raises(UsageError, match="residual must be true or false"):
        create_model("unet", width=4, residual="maybe")
