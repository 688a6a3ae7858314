"""Noise models: statistics, determinism, the spec parser and the evaluation-noise contract."""

from __future__ import annotations

import math

import pytest
import torch

from dae.data.noise import (
    NOISES,
    Block,
    Compose,
    Gaussian,
    Mask,
    Noise,
    NoNoise,
    Poisson,
    SaltPepper,
    Speckle,
    add_noise,
    list_noises,
    make_noisy,
    parse_noise,
)
from dae.errors import UsageError

# One representative spec per registered name; test_every_registered_noise_has_an_example keeps it complete.
EXAMPLES = {
    "none": "none",
    "gaussian": "gaussian:0.3",
    "salt_pepper": "salt_pepper:0.1",
    "mask": "mask:0.25",
    "block": "block:third",
    "poisson": "poisson:30",
    "speckle": "speckle:0.2",
}
ALL_SPECS = [*EXAMPLES.values(), "gaussian:0.1-0.9", "block:0.3", "gaussian:0.3+mask:0.1"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_registered_noise_has_an_example():
    assert sorted(EXAMPLES) == NOISES.names() == list_noises()


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 17, 13)])
def test_shape_range_dtype_and_input_untouched(spec, shape):
    x = torch.rand(shape, generator=gen(1))
    before = x.clone()
    y = parse_noise(spec)(x, gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before)
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_deterministic_under_a_seed(spec):
    x = torch.rand(4, 1, 20, 20, generator=gen(1))
    a = add_noise(x, spec, seed=5)
    b = add_noise(x, spec, seed=5)
    assert torch.equal(a, b)
    if spec != "none":
        assert not torch.equal(a, add_noise(x, spec, seed=6))


def test_add_noise_accepts_a_generator_and_advances_it():
    x = torch.rand(2, 1, 8, 8)
    g = gen(3)
    first = add_noise(x, "gaussian:0.2", g)
    second = add_noise(x, "gaussian:0.2", g)
    assert torch.equal(first, add_noise(x, "gaussian:0.2", seed=3))
    assert not torch.equal(first, second)


def test_gaussian_residual_std_matches_level_without_clip():
    x = torch.full((8, 1, 32, 32), 0.5)
    y = Gaussian(0.4, clip=False)(x, gen())
    r = y - x
    assert abs(r.std().item() - 0.4) < 0.01
    assert abs(r.mean().item()) < 0.01
    assert y.min() < 0 and y.max() > 1  # clip=false really keeps values outside [0, 1]


def test_gaussian_clip_is_the_default():
    x = torch.full((2, 1, 16, 16), 0.5)
    y = Gaussian(0.4)(x, gen())
    assert y.min() == 0 and y.max() == 1
    unclipped = Gaussian(0.4, clip=False)(x, gen())
    assert torch.equal(y, unclipped.clamp(0, 1))  # same draws, only the clip differs


def test_gaussian_range_gives_each_image_its_own_level():
    x = torch.full((16, 1, 32, 32), 0.5)
    y = parse_noise("gaussian:0.1-0.9,clip=false")(x, gen())
    per_image = (y - x).flatten(1).std(dim=1)
    assert per_image.min() > 0.08 and per_image.max() < 0.95
    assert per_image.max() - per_image.min() > 0.3  # levels genuinely differ between images
    # Within an image the level is one value: both halves of each image have the same std.
    halves = (y - x).view(16, 2, -1).std(dim=2)
    assert torch.allclose(halves[:, 0], halves[:, 1], rtol=0.2)


def test_mask_zeroes_exactly_the_fraction_of_pixels_across_channels():
    x = torch.ones(5, 3, 20, 20)
    y = Mask(0.25)(x, gen())
    zero = y == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    assert zero[:, 0].flatten(1).sum(dim=1).tolist() == [100] * 5
    assert not torch.equal(zero[0], zero[1])  # each image has its own mask


def test_salt_pepper_fractions():
    x = torch.full((4, 1, 30, 30), 0.5)
    y = SaltPepper(0.2)(x, gen())
    n = 30 * 30
    assert (y == 1).flatten(1).sum(dim=1).tolist() == [90] * 4
    assert (y == 0).flatten(1).sum(dim=1).tolist() == [90] * 4
    assert ((y == 0.5).float().mean().item()) == pytest.approx(1 - 180 / n)


def test_poisson_preserves_the_mean_with_shot_noise_variance():
    x = torch.full((16, 1, 32, 32), 0.3)
    y = Poisson(30, clip=False)(x, gen())
    assert abs(y.mean().item() - 0.3) < 0.005
    assert abs(y.var().item() - 0.3 / 30) < 0.001
    assert torch.allclose(y * 30, (y * 30).round(), atol=1e-4)  # counts are integers


def test_speckle_is_multiplicative():
    x = torch.cat([torch.zeros(4, 1, 16, 16), torch.full((4, 1, 16, 16), 0.5)])
    y = Speckle(0.2, clip=False)(x, gen())
    assert torch.equal(y[:4], x[:4])  # black stays black
    assert abs((y[4:] - x[4:]).std().item() - 0.1) < 0.01


@pytest.mark.parametrize("word,frac", [("third", 1 / 3), ("quarter", 1 / 4), ("half", 1 / 2)])
def test_block_band_keeps_the_stated_fraction_visible(word, frac):
    h = w = 24
    x = torch.ones(32, 1, h, w)
    noise = parse_noise(f"block:{word}")
    y = noise(x, gen())
    visible = (y != 0).flatten(1).float().mean(dim=1)
    assert torch.allclose(visible, torch.full_like(visible, frac))
    band = y[:, 0] != 0  # (N, H, W)
    rows = band.all(dim=2)  # rows fully visible
    cols = band.all(dim=1)
    for i in range(32):
        # The visible region is one contiguous band of full rows or full columns.
        idx = rows[i].nonzero() if rows[i].any() else cols[i].nonzero()
        assert idx.numel() == round(frac * h)
        assert (idx.flatten().diff() == 1).all()
    assert rows.any(dim=1).any() and cols.any(dim=1).any()  # random orientation: both occur


@pytest.mark.parametrize("side", ["top", "bottom", "left", "right"])
def test_block_fixed_sides(side):
    x = torch.ones(2, 1, 12, 16)
    y = parse_noise(f"block:quarter,side={side}")(x, gen())
    vis = y[0, 0] != 0
    expect = torch.zeros(12, 16, dtype=torch.bool)
    if side == "top":
        expect[:3] = True
    elif side == "bottom":
        expect[-3:] = True
    elif side == "left":
        expect[:, :4] = True
    else:
        expect[:, -4:] = True
    assert torch.equal(vis, expect) and torch.equal(y[0], y[1])


def test_block_random_rectangles_cover_about_the_fraction():
    x = torch.ones(64, 1, 28, 28)
    y = parse_noise("block:0.3")(x, gen())
    occluded = (y == 0).flatten(1).float().mean(dim=1)
    assert abs(occluded.mean().item() - 0.3) < 0.03
    assert occluded.std() > 0  # the grid shift varies per image
    assert parse_noise("block:0")(x, gen()).eq(1).all()
    assert parse_noise("block:1")(x, gen()).eq(0).all()


def test_block_larger_than_the_image_occludes_whole_images():
    # The pixel grid of cells was once built at full size: size=1e9 asked for exabytes.
    x = torch.ones(32, 1, 28, 28)
    y = parse_noise("block:0.5,size=1000000000")(x, gen())
    occluded = (y == 0).flatten(1).float().mean(dim=1)
    assert set(occluded.tolist()) == {0.0, 1.0}  # one cell covers each image: all of it or none of it


def test_none_is_identity_copy():
    x = torch.rand(2, 1, 5, 5)
    y = NoNoise()(x, gen())
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_compose_applies_left_to_right():
    x = torch.full((4, 1, 20, 20), 0.5)
    masked_then_noised = parse_noise("mask:0.5+gaussian:0.2,clip=false")(x, gen())
    noised_then_masked = parse_noise("gaussian:0.2,clip=false+mask:0.5")(x, gen())
    assert (masked_then_noised == 0).sum() == 0
    assert (noised_then_masked == 0).float().mean().item() == pytest.approx(0.5)


def test_compose_flattens_and_combines_sigma():
    c = Compose((Gaussian(0.3), Compose((NoNoise(), Gaussian(0.4)))))
    assert c.spec == "gaussian:0.3+none+gaussian:0.4"
    assert c.sigma_estimate == pytest.approx(0.5)
    assert Compose((Gaussian(0.3), Mask(0.1))).sigma_estimate is None


def test_sigma_estimates():
    assert parse_noise("gaussian:0.3").sigma_estimate == 0.3
    assert parse_noise("gaussian:0.1-0.9").sigma_estimate is None
    assert parse_noise("none").sigma_estimate == 0.0
    assert parse_noise("mask:0.2").sigma_estimate is None


@pytest.mark.parametrize(
    "spec",
    [
        *ALL_SPECS,
        "gaussian:0.3,clip=false",
        "gaussian:0.1-0.9,clip=false",
        "gaussian:0.001",
        "block:quarter,side=top",
        "block:keep=0.4",
        "block:0.3,size=3",
        "poisson:12.5,clip=false",
        "speckle:0.2,clip=false",
        "none+mask:0.1+block:half",
    ],
)
def test_spec_round_trip(spec):
    noise = parse_noise(spec)
    assert isinstance(noise, Noise)
    assert noise.spec == spec and str(noise) == spec
    assert parse_noise(noise.spec) == noise
    assert parse_noise(noise) is noise  # objects pass through


@pytest.mark.parametrize(
    "spec,canonical",
    [
        (" Gaussian : 0.30 ", "gaussian:0.3"),
        ("gaussian:0.3-0.3", "gaussian:0.3"),
        ("gaussian:1e-1", "gaussian:0.1"),
        ("gaussian:0.3,clip=true", "gaussian:0.3"),
        ("gaussian:0.3,clip=no", "gaussian:0.3,clip=false"),
        ("block:keep=0.25", "block:quarter"),
        ("block:third,side=random", "block:third"),
        ("poisson:30.0", "poisson:30"),
    ],
)
def test_spec_canonical_forms(spec, canonical):
    assert parse_noise(spec).spec == canonical


def test_objects_round_trip_through_their_spec():
    for noise in [
        Gaussian((0.1, 0.9)),
        Gaussian(25 / 255),
        Block(keep=1 / 3, side="left"),
        Block(occlude=0.3),
    ]:
        assert parse_noise(noise.spec) == noise


def test_unknown_name_lists_valid_names():
    with pytest.raises(UsageError) as e:
        parse_noise("gausian:0.5")
    assert str(e.value) == (
        "unknown noise 'gausian' in 'gausian:0.5'; "
        "valid: block, gaussian, mask, none, poisson, salt_pepper, speckle"
    )


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("gaussian:-0.1", "'gaussian:-0.1': gaussian level must be a finite number >= 0"),
        ("gaussian:0.9-0.1", "lo > hi"),
        ("gaussian:abc", "'abc'"),
        ("gaussian:nan", "finite"),
        ("gaussian", "needs a value"),
        ("gaussian:0.3,foo=1", "unknown option 'foo' for noise 'gaussian'; valid options: clip"),
        ("gaussian:0.3,clip=maybe", "clip must be true or false"),
        ("gaussian:0.3,0.4", "must be key=value"),
        ("gaussian:0.3,clip=false,clip=true", "given twice"),
        ("mask:1.5", "mask fraction must be in [0, 1], got 1.5"),
        ("salt_pepper:-0.1", "salt_pepper fraction must be in [0, 1]"),
        ("block:fifth", "half, third, quarter"),
        ("block:0.3,side=top", "side applies only to bands"),
        ("block:third,size=3", "size applies only to random blocks"),
        ("block:third,side=diagonal", "block side must be one of"),
        ("poisson:0", "poisson peak must be a finite number > 0"),
        ("none:3", "takes no value"),
        ("", "empty noise spec"),
        ("gaussian:0.3+", "empty component"),
        ("gaussian:0.3+mask:2", "'mask:2' in 'gaussian:0.3+mask:2'"),
        ("gaussian:", "empty item"),
    ],
)
def test_bad_specs_name_the_bad_part(spec, needle):
    with pytest.raises(UsageError) as e:
        parse_noise(spec)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_programmatic_construction_is_validated():
    with pytest.raises(UsageError):
        Gaussian(-1)
    with pytest.raises(UsageError):
        Mask(2)
    with pytest.raises(UsageError):
        Block()
    with pytest.raises(UsageError):
        Block(occlude=0.2, keep=0.5)
    with pytest.raises(UsageError):
        parse_noise(0.3)


def test_bad_inputs_are_usage_errors():
    noise = Gaussian(0.1)
    with pytest.raises(UsageError, match="expects a float"):
        noise(torch.rand(1, 8, 8), gen())
    with pytest.raises(UsageError, match="expects a float"):
        noise(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), gen())
    with pytest.raises(UsageError, match="torch.Generator"):
        noise(torch.rand(1, 1, 8, 8), 0)
    with pytest.raises(UsageError, match="seed"):
        add_noise(torch.rand(1, 1, 8, 8), "gaussian:0.1", seed="0")
    with pytest.raises(UsageError, match="out of range"):
        add_noise(torch.rand(1, 1, 8, 8), "gaussian:0.1", seed=2**64)  # was torch's bare ValueError


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 255.0, -0.5])
def test_images_outside_the_unit_range_are_refused(value):
    x = torch.rand(1, 1, 8, 8)
    x[0, 0, 3, 3] = value
    with pytest.raises(UsageError, match=r"must lie in \[0, 1\]"):
        add_noise(x, "poisson:30", seed=0)  # NaN was torch's "invalid Poisson rate"; 255 went through
    with pytest.raises(UsageError, match=r"must lie in \[0, 1\]"):
        make_noisy(x, "gaussian:0.5", seed=0)


def test_a_numpy_integer_is_a_seed():
    import numpy as np

    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(add_noise(x, "gaussian:0.3", seed=np.int64(3)), add_noise(x, "gaussian:0.3", seed=3))


def test_float64_inputs_work():
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for spec in ALL_SPECS:
        assert add_noise(x, spec, 0).dtype == torch.float64


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_make_noisy_is_fixed_by_its_seed(spec):
    x = torch.rand(37, 1, 12, 12, generator=gen(9))
    full = make_noisy(x, spec, seed=1234)
    assert torch.equal(full, make_noisy(x, spec, seed=1234))
    if spec != "none":
        assert not torch.equal(full, make_noisy(x, spec, seed=1235))


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("size", [5, 12, 28])  # 5x5 = 25 pixels: torch redraws the tail of such a normal draw
def test_make_noisy_gives_image_i_the_same_noise_whatever_the_set(spec, size):
    x = torch.rand(40, 2, size, size, generator=gen(3))
    full = make_noisy(x, spec, seed=1234)
    for k in (1, 7, 16, 39):  # --limit k evaluates a prefix of --limit 40's noisy set
        assert torch.equal(make_noisy(x[:k], spec, seed=1234), full[:k])
    # Changing other images changes nothing for image 0; an image's noise comes with its index, not its place
    # in memory, so a slice from the middle is a different draw.
    other = x.clone()
    other[1:] = torch.rand(39, 2, size, size, generator=gen(4))
    assert torch.equal(make_noisy(other, spec, seed=1234)[0], full[0])
    if spec != "none":
        assert not torch.equal(make_noisy(x[10:20], spec, seed=1234), full[10:20])


def test_make_noisy_seeds_images_apart():
    from dae.data.noise import image_seed

    seeds = {image_seed(seed, i) for seed in range(50) for i in range(200)}
    assert len(seeds) == 50 * 200 and all(0 <= s < 2**64 for s in seeds)
    x = torch.full((3, 1, 8, 8), 0.5)
    noisy = make_noisy(x, "gaussian:0.3,clip=false", seed=0)
    assert not torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[1], noisy[2])


def test_make_noisy_rejects_a_generator():
    with pytest.raises(UsageError, match="int seed"):
        make_noisy(torch.rand(1, 1, 4, 4), "gaussian:0.1", gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("spec", ALL_SPECS)
def test_cpu_generator_gives_the_same_noise_on_gpu(spec):
    x = torch.rand(4, 3, 16, 16, generator=gen(2))
    cpu = make_noisy(x, spec, seed=7)
    gpu = make_noisy(x.cuda(), spec, seed=7)
    assert gpu.is_cuda
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-6)
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    assert parse_noise(spec)(x.cuda(), cuda_gen).is_cuda


def test_registered_builders_are_noise_classes():
    for name in NOISES.names():
        cls = NOISES.get(name)
        assert issubclass(cls, Noise) and cls.name == name
    assert math.isclose(parse_noise("block:third").keep, 1 / 3)
