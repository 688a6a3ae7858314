"""Noise models: small frozen dataclasses called as `noise(x, generator)`, parsed from text specs.

Every model takes a float NCHW batch in [0, 1] and an explicit `torch.Generator`, corrupts the whole batch in
one vectorised call, and is deterministic given the generator. Random numbers are drawn on the generator's
device and then moved to the batch's device, so a CPU generator gives the same noise whether `x` lives on the
CPU or a GPU.

Spec grammar (what `parse_noise` reads and `.spec` writes):

    spec      := component ("+" component)*         applied left to right
    component := name [":" item ("," item)*]
    item      := value | key "=" value              a bare value must come first

    none                      identity (plain autoencoder)
    gaussian:0.3              clip(x + 0.3 * N(0, 1), 0, 1)
    gaussian:0.1-0.9          blind training: each image draws its own level s ~ U(0.1, 0.9)
    gaussian:0.3,clip=false   keep values outside [0, 1]
    salt_pepper:0.1           10% of pixels set to 1 or 0 (half each)
    mask:0.25                 25% of pixels set to 0 (Vincent et al. 2010 masking noise)
    block:third               keep a band covering a third of the image visible, zero the rest
    block:quarter,side=top    keep the top quarter of the rows visible
    block:0.3                 zero random square blocks covering ~30% of the image
    poisson:30                Poisson(30 x) / 30 (peak photon count 30), clipped
    speckle:0.2               clip(x + x * 0.2 * N(0, 1), 0, 1)

"Pixels" for salt_pepper, mask and block are spatial positions: all channels of a chosen pixel are corrupted
together, which is what corruption of a real RGB image looks like (for grey images it makes no difference).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from dae.checks import FALSE_WORDS, TRUE_WORDS, is_whole
from dae.errors import UsageError
from dae.registry import Registry

__all__ = [
    "NOISES",
    "Noise",
    "NoNoise",
    "Gaussian",
    "SaltPepper",
    "Mask",
    "Block",
    "Poisson",
    "Speckle",
    "Compose",
    "parse_noise",
    "add_noise",
    "make_noisy",
    "list_noises",
]

NOISES: Registry[Noise] = Registry("noise", name_pattern="[a-z][a-z0-9_]*")

_TRUE = {"1", *TRUE_WORDS}
_FALSE = {"0", *FALSE_WORDS}


def _fmt(v: float) -> str:
    """Shortest text that reads back as the same float; '30' rather than '30.0'."""
    r = repr(float(v))
    return r[:-2] if r.endswith(".0") else r


def _parse_float(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise UsageError(f"{what} must be a finite number, got {text!r}")
    return v


def _parse_bool(text: str, what: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise UsageError(f"{what} must be true or false, got {text!r}")


def _check_fraction(v: float, what: str) -> None:
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise UsageError(f"{what} must be in [0, 1], got {v}")


def _check_level(v: float, what: str) -> None:
    if not (math.isfinite(v) and v >= 0.0):
        raise UsageError(f"{what} must be a finite number >= 0, got {v}")


def _reject_options(name: str, options: dict[str, str], valid: tuple[str, ...]) -> None:
    for key in options:
        if key not in valid:
            allowed = ", ".join(valid) if valid else "none"
            raise UsageError(f"unknown option {key!r} for noise {name!r}; valid options: {allowed}")


def _require_arg(name: str, arg: str | None, example: str) -> str:
    if arg is None:
        raise UsageError(f"noise {name!r} needs a value, e.g. {example!r}")
    return arg


class Noise:
    """Base class: `noise(x, generator)` returns a corrupted copy of the (N, C, H, W) batch `x` in [0, 1].

    Subclasses are frozen dataclasses implementing `_apply`, `spec` and `from_spec`; `sigma_estimate` is the
    Gaussian std a classical denoiser should assume (None: estimate it from the noisy image).

    Example:
        >>> noise = parse_noise("gaussian:0.3")
        >>> noisy = noise(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0))
    """

    name: ClassVar[str] = ""
    # The levels a sweep of the family alone (`dae eval --noise gaussian`) runs: std, fraction or strength,
    # 0.1 (light) to 1.0 (the image is mostly noise).
    sweep: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise UsageError(f"noise {self.spec!r} expects a float (N, C, H, W) batch, got {got}")
        if not isinstance(generator, torch.Generator):
            raise UsageError(
                f"noise {self.spec!r} needs a torch.Generator, got {type(generator).__name__}; "
                "use add_noise(x, spec, seed) to noise from an integer seed"
            )
        return self._apply(x, generator)

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        raise NotImplementedError

    @property
    def sigma_estimate(self) -> float | None:
        return None

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec


# Random draws happen on the generator's device (so a CPU generator is device-independent), then move to x.
def _randn(shape: tuple[int, ...], g: torch.Generator, x: Tensor) -> Tensor:
    return torch.randn(shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)


def _rand(shape: tuple[int, ...], g: torch.Generator, x: Tensor) -> Tensor:
    return torch.rand(shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)


def _exact_pixel_ranks(x: Tensor, g: torch.Generator) -> Tensor:
    """A random order of each image's pixels: (N, 1, H, W) ranks 0..H*W-1, a fresh permutation per image."""
    n, _, h, w = x.shape
    u = torch.rand((n, h * w), generator=g, device=g.device)
    ranks = u.argsort(dim=1).argsort(dim=1)  # (N, H*W): rank of each pixel in its image's random order
    return ranks.view(n, 1, h, w).to(x.device)


@NOISES.register("none")
@dataclass(frozen=True)
class NoNoise(Noise):
    """Identity: the input comes back unchanged (a copy), for training plain autoencoders."""

    name: ClassVar[str] = "none"

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        return x.clone()

    @property
    def spec(self) -> str:
        return "none"

    @property
    def sigma_estimate(self) -> float | None:
        return 0.0

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        if arg is not None:
            raise UsageError(f"noise 'none' takes no value, got {arg!r}")
        _reject_options("none", options, ())
        return cls()


@NOISES.register("gaussian")
@dataclass(frozen=True)
class Gaussian(Noise):
    """Additive Gaussian noise `x + s * N(0, 1)`, clipped to [0, 1] unless `clip=False`.

    `level` is one s, or a (lo, hi) range from which each image draws its own s ~ U(lo, hi) (blind training).

    Example:
        >>> Gaussian(0.3).spec, Gaussian((0.1, 0.9)).spec
        ('gaussian:0.3', 'gaussian:0.1-0.9')
    """

    level: float | tuple[float, float]
    clip: bool = True
    name: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        level = self.level
        if isinstance(level, (tuple, list)):
            if len(level) != 2:
                raise UsageError(f"gaussian level range must be (lo, hi), got {level!r}")
            lo, hi = float(level[0]), float(level[1])
            _check_level(lo, "gaussian level")
            _check_level(hi, "gaussian level")
            if lo > hi:
                raise UsageError(f"gaussian level range {_fmt(lo)}-{_fmt(hi)} has lo > hi; write it as lo-hi")
            # A degenerate range is one level; normalising keeps `.spec` and equality canonical.
            object.__setattr__(self, "level", lo if lo == hi else (lo, hi))
        else:
            try:
                level = float(level)
            except (TypeError, ValueError):
                raise UsageError(f"gaussian level must be a number or (lo, hi), got {level!r}") from None
            _check_level(level, "gaussian level")
            object.__setattr__(self, "level", level)
        object.__setattr__(self, "clip", bool(self.clip))

    @property
    def is_range(self) -> bool:
        return isinstance(self.level, tuple)

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        n = x.shape[0]
        if self.is_range:
            lo, hi = self.level
            s = lo + (hi - lo) * _rand((n, 1, 1, 1), g, x)  # (N, 1, 1, 1): one level per image
        else:
            s = self.level
        out = x + s * _randn(tuple(x.shape), g, x)
        return out.clamp(0.0, 1.0) if self.clip else out

    @property
    def spec(self) -> str:
        level = f"{_fmt(self.level[0])}-{_fmt(self.level[1])}" if self.is_range else _fmt(self.level)
        return f"gaussian:{level}" + ("" if self.clip else ",clip=false")

    @property
    def sigma_estimate(self) -> float | None:
        return None if self.is_range else float(self.level)

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        text = _require_arg("gaussian", arg, "gaussian:0.3").strip()
        _reject_options("gaussian", options, ("clip",))
        clip = _parse_bool(options["clip"], "gaussian option clip") if "clip" in options else True
        try:
            return cls(float(text), clip=clip)
        except ValueError:
            pass
        # A range 'lo-hi': split at a '-' that is not a sign (start) nor an exponent sign ('1e-3').
        for i, ch in enumerate(text):
            if ch == "-" and i > 0 and text[i - 1] not in "eE":
                lo, hi = text[:i].strip(), text[i + 1 :].strip()
                try:
                    lo_v, hi_v = float(lo), float(hi)
                except ValueError:
                    continue
                if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
                    continue
                return cls((lo_v, hi_v), clip=clip)
        raise UsageError(f"gaussian level must be a number like 0.3 or a range like 0.1-0.9, got {text!r}")


@NOISES.register("salt_pepper")
@dataclass(frozen=True)
class SaltPepper(Noise):
    """Impulse noise: exactly round(p * H * W) pixels per image, half set to 1 (salt), half to 0 (pepper)."""

    fraction: float
    name: ClassVar[str] = "salt_pepper"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", float(self.fraction))
        _check_fraction(self.fraction, "salt_pepper fraction")

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        hw = x.shape[2] * x.shape[3]
        k = round(self.fraction * hw)
        k_salt = k // 2  # odd k: the extra pixel goes to pepper
        ranks = _exact_pixel_ranks(x, g)  # (N, 1, H, W)
        out = x.masked_fill(ranks < k_salt, 1.0)
        return out.masked_fill((ranks >= k_salt) & (ranks < k), 0.0)

    @property
    def spec(self) -> str:
        return f"salt_pepper:{_fmt(self.fraction)}"

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        text = _require_arg("salt_pepper", arg, "salt_pepper:0.1")
        _reject_options("salt_pepper", options, ())
        return cls(_parse_float(text, "salt_pepper fraction"))


@NOISES.register("mask")
@dataclass(frozen=True)
class Mask(Noise):
    """Masking noise (Vincent et al. 2010): exactly round(p * H * W) random pixels per image set to 0."""

    fraction: float
    name: ClassVar[str] = "mask"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", float(self.fraction))
        _check_fraction(self.fraction, "mask fraction")

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        k = round(self.fraction * x.shape[2] * x.shape[3])
        return x.masked_fill(_exact_pixel_ranks(x, g) < k, 0.0)

    @property
    def spec(self) -> str:
        return f"mask:{_fmt(self.fraction)}"

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        text = _require_arg("mask", arg, "mask:0.25")
        _reject_options("mask", options, ())
        return cls(_parse_float(text, "mask fraction"))


_KEEP_WORDS = {"half": 1 / 2, "third": 1 / 3, "quarter": 1 / 4}
_SIDES = ("random", "horizontal", "vertical", "top", "bottom", "left", "right")


@NOISES.register("block")
@dataclass(frozen=True)
class Block(Noise):
    """Occlusion, in one of two forms (exactly one of `keep` / `occlude`).

    keep=f (`block:third`, `block:quarter`, `block:half`, `block:keep=0.4`): only a contiguous band of
      round(f * H) rows or round(f * W) columns stays visible, the rest is zeroed. `side` picks the band:
      top / bottom (rows), left / right (columns), horizontal / vertical (rows / columns at a random offset),
      random (default: each image draws rows or columns, then a random offset).
    occlude=p (`block:0.3`): random size x size squares on a grid (randomly shifted per image) are zeroed,
      round(p * cells) of them, covering ~p of each image on average. `size` defaults to ~1/7 of the shorter
      side (4 px on 28x28).

    Example:
        >>> Block(keep=1 / 3).spec, Block(occlude=0.3).spec
        ('block:third', 'block:0.3')
    """

    occlude: float | None = None
    keep: float | None = None
    side: str = "random"
    size: int | None = None
    name: ClassVar[str] = "block"

    def __post_init__(self) -> None:
        if (self.occlude is None) == (self.keep is None):
            raise UsageError("block noise needs exactly one of occlude=p (random blocks) or keep=f (a band)")
        if self.keep is not None:
            keep = float(self.keep)
            if not (math.isfinite(keep) and 0.0 < keep <= 1.0):
                raise UsageError(f"block keep must be a fraction in (0, 1], got {self.keep}")
            object.__setattr__(self, "keep", keep)
            if self.side not in _SIDES:
                raise UsageError(f"block side must be one of {', '.join(_SIDES)}, got {self.side!r}")
            if self.size is not None:
                raise UsageError("block option size applies only to random blocks (block:0.3), not to bands")
        else:
            occlude = float(self.occlude)
            _check_fraction(occlude, "block fraction")
            object.__setattr__(self, "occlude", occlude)
            if self.side != "random":
                raise UsageError("block option side applies only to bands (block:third, block:quarter)")
            if self.size is not None and (int(self.size) != self.size or self.size < 1):
                raise UsageError(f"block size must be a whole number of pixels >= 1, got {self.size}")
            if self.size is not None:
                object.__setattr__(self, "size", int(self.size))

    def visible(self, x: Tensor, g: torch.Generator) -> Tensor:
        """The (N, 1, H, W) boolean map of pixels left visible; what `__call__` uses to zero the rest."""
        return self._band(x, g) if self.keep is not None else self._blocks(x, g)

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        return x.masked_fill(~self.visible(x, g), 0.0)

    def _band(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        bh, bw = max(1, round(self.keep * h)), max(1, round(self.keep * w))
        dev = g.device
        if self.side in ("top", "bottom", "horizontal"):
            rows = torch.ones(n, dtype=torch.bool, device=dev)
        elif self.side in ("left", "right", "vertical"):
            rows = torch.zeros(n, dtype=torch.bool, device=dev)
        else:
            rows = torch.randint(0, 2, (n,), generator=g, device=dev).bool()
        if self.side in ("top", "left"):
            r0 = c0 = torch.zeros(n, dtype=torch.long, device=dev)
        elif self.side == "bottom":
            r0 = c0 = torch.full((n,), h - bh, dtype=torch.long, device=dev)
        elif self.side == "right":
            r0 = c0 = torch.full((n,), w - bw, dtype=torch.long, device=dev)
        else:
            u = torch.rand((n,), generator=g, device=dev)
            r0 = (u * (h - bh + 1)).long().clamp_max(h - bh)  # uniform start row of the band
            c0 = (u * (w - bw + 1)).long().clamp_max(w - bw)
        ri = torch.arange(h, device=dev).view(1, h, 1)
        ci = torch.arange(w, device=dev).view(1, 1, w)
        in_rows = (ri >= r0.view(n, 1, 1)) & (ri < (r0 + bh).view(n, 1, 1))  # (N, H, 1)
        in_cols = (ci >= c0.view(n, 1, 1)) & (ci < (c0 + bw).view(n, 1, 1))  # (N, 1, W)
        vis = torch.where(rows.view(n, 1, 1), in_rows.expand(n, h, w), in_cols.expand(n, h, w))
        return vis.unsqueeze(1).to(x.device)  # (N, 1, H, W)

    def _blocks(self, x: Tensor, g: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        b = int(self.size) if self.size is not None else max(1, round(min(h, w) / 7))
        dev = g.device
        # One extra cell each way so a random shift of the grid still covers the image.
        gh, gw = -(-h // b) + 1, -(-w // b) + 1
        k = round(self.occlude * gh * gw)
        u = torch.rand((n, gh * gw), generator=g, device=dev)
        cells = (u.argsort(dim=1).argsort(dim=1) < k).view(n, gh, gw)  # exactly k occluded cells each
        dy = torch.randint(0, b, (n,), generator=g, device=dev)
        dx = torch.randint(0, b, (n,), generator=g, device=dev)
        # Each pixel looks up its (shifted) cell; the pixel grid is never built, so any size costs O(N*H*W).
        rows = ((torch.arange(h, device=dev).view(1, h) + dy.view(n, 1)) // b).view(n, h, 1)
        cols = ((torch.arange(w, device=dev).view(1, w) + dx.view(n, 1)) // b).view(n, 1, w)
        occluded = cells[torch.arange(n, device=dev).view(n, 1, 1), rows, cols]  # (N, H, W)
        return (~occluded).unsqueeze(1).to(x.device)

    @property
    def spec(self) -> str:
        if self.keep is not None:
            words = {v: k for k, v in _KEEP_WORDS.items()}
            head = f"block:{words[self.keep]}" if self.keep in words else f"block:keep={_fmt(self.keep)}"
            return head + ("" if self.side == "random" else f",side={self.side}")
        return f"block:{_fmt(self.occlude)}" + ("" if self.size is None else f",size={int(self.size)}")

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        _reject_options("block", options, ("keep", "side", "size"))
        kw: dict[str, Any] = {}
        if arg is not None:
            word = arg.strip().lower()
            if word in _KEEP_WORDS:
                kw["keep"] = _KEEP_WORDS[word]
            else:
                try:
                    kw["occlude"] = _parse_float(word, "block fraction")
                except UsageError:
                    raise UsageError(
                        "block takes half, third, quarter (visible band) or a fraction to occlude, "
                        f"got {arg!r}"
                    ) from None
        if "keep" in options:
            if arg is not None:
                raise UsageError("block takes either a value (block:third, block:0.3) or keep=f, not both")
            kw["keep"] = _parse_float(options["keep"], "block keep")
        if not kw:
            raise UsageError("noise 'block' needs a value, e.g. 'block:third' or 'block:0.3'")
        if "side" in options:
            kw["side"] = options["side"].strip().lower()
        if "size" in options:
            kw["size"] = _parse_float(options["size"], "block size")
        return cls(**kw)


@NOISES.register("poisson")
@dataclass(frozen=True)
class Poisson(Noise):
    """Shot noise at peak photon count `peak`: Poisson(peak * x) / peak, clipped unless `clip=False`."""

    peak: float
    clip: bool = True
    name: ClassVar[str] = "poisson"
    # Peaks are photon counts, where fewer is noisier: at 0.1-1.0 every sweep point would be nearly pure noise.
    sweep: ClassVar[tuple[float, ...]] = (1, 2, 5, 10, 20, 30, 50, 100)

    def __post_init__(self) -> None:
        peak = float(self.peak)
        if not (math.isfinite(peak) and peak > 0):
            raise UsageError(f"poisson peak must be a finite number > 0, got {self.peak}")
        object.__setattr__(self, "peak", peak)
        object.__setattr__(self, "clip", bool(self.clip))

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        # Rates on the generator's device, float32 (torch.poisson does not take every dtype everywhere).
        rates = (x.detach().clamp_min(0.0) * self.peak).to(device=g.device, dtype=torch.float32)
        out = (torch.poisson(rates, generator=g) / self.peak).to(device=x.device, dtype=x.dtype)
        return out.clamp(0.0, 1.0) if self.clip else out

    @property
    def spec(self) -> str:
        return f"poisson:{_fmt(self.peak)}" + ("" if self.clip else ",clip=false")

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        text = _require_arg("poisson", arg, "poisson:30")
        _reject_options("poisson", options, ("clip",))
        clip = _parse_bool(options["clip"], "poisson option clip") if "clip" in options else True
        return cls(_parse_float(text, "poisson peak"), clip=clip)


@NOISES.register("speckle")
@dataclass(frozen=True)
class Speckle(Noise):
    """Multiplicative noise `x + x * s * N(0, 1)`, clipped to [0, 1] unless `clip=False`."""

    level: float
    clip: bool = True
    name: ClassVar[str] = "speckle"

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", float(self.level))
        _check_level(self.level, "speckle level")
        object.__setattr__(self, "clip", bool(self.clip))

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        out = x + x * self.level * _randn(tuple(x.shape), g, x)
        return out.clamp(0.0, 1.0) if self.clip else out

    @property
    def spec(self) -> str:
        return f"speckle:{_fmt(self.level)}" + ("" if self.clip else ",clip=false")

    @classmethod
    def from_spec(cls, arg: str | None, options: dict[str, str]) -> Noise:
        text = _require_arg("speckle", arg, "speckle:0.2")
        _reject_options("speckle", options, ("clip",))
        clip = _parse_bool(options["clip"], "speckle option clip") if "clip" in options else True
        return cls(_parse_float(text, "speckle level"), clip=clip)


@dataclass(frozen=True)
class Compose(Noise):
    """Several noise models applied left to right with the same generator; spec 'a+b'.

    Example:
        >>> parse_noise("gaussian:0.3+mask:0.1").parts
        (Gaussian(level=0.3, clip=True), Mask(fraction=0.1))
    """

    parts: tuple[Noise, ...]
    name: ClassVar[str] = "compose"

    def __post_init__(self) -> None:
        flat: list[Noise] = []
        for p in self.parts:
            if not isinstance(p, Noise):
                raise UsageError(f"Compose takes noise models, got {type(p).__name__}")
            flat.extend(p.parts if isinstance(p, Compose) else (p,))
        if not flat:
            raise UsageError("Compose needs at least one noise model")
        object.__setattr__(self, "parts", tuple(flat))

    def _apply(self, x: Tensor, g: torch.Generator) -> Tensor:
        for p in self.parts:
            x = p(x, g)
        return x

    @property
    def spec(self) -> str:
        return "+".join(p.spec for p in self.parts)

    @property
    def sigma_estimate(self) -> float | None:
        # Independent Gaussian parts add in variance; anything non-Gaussian means "estimate it".
        sigmas = [p.sigma_estimate for p in self.parts]
        if any(s is None for s in sigmas):
            return None
        return math.sqrt(sum(s * s for s in sigmas))


# Split components at every '+' except an exponent sign, so '1e+3' stays inside its number.
_SPLIT = re.compile(r"(?<![0-9.][eE])\+")


def _parse_component(part: str) -> Noise:
    name, sep, rest = part.partition(":")
    name = name.strip().lower()
    if name not in NOISES:
        raise UsageError(f"unknown noise {name!r}; valid: {', '.join(NOISES.names())}")
    arg: str | None = None
    options: dict[str, str] = {}
    if sep:
        items = [i.strip() for i in rest.split(",")]
        if any(not i for i in items):
            raise UsageError("empty item (stray comma or nothing after ':')")
        for idx, item in enumerate(items):
            key, eq, value = item.partition("=")
            if eq:
                key = key.strip().lower()
                if key in options:
                    raise UsageError(f"option {key!r} given twice")
                options[key] = value.strip()
            elif idx == 0:
                arg = item
            else:
                raise UsageError(f"{item!r} must be key=value (only the first item may be a bare value)")
    builder = NOISES.get(name)
    noise = builder.from_spec(arg, options)
    return noise


def parse_noise(spec: str | Noise) -> Noise:
    """Parse a text spec (see module docstring) into a noise model; Noise objects pass through unchanged.

    Example:
        >>> parse_noise("gaussian:0.1-0.9").spec
        'gaussian:0.1-0.9'
    """
    if isinstance(spec, Noise):
        return spec
    if not isinstance(spec, str):
        raise UsageError(f"noise spec must be a string like 'gaussian:0.3', got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise UsageError(f"empty noise spec; valid: {', '.join(NOISES.names())} (e.g. 'gaussian:0.3')")
    raw_parts = _SPLIT.split(text)
    parts: list[Noise] = []
    for part in raw_parts:
        part = part.strip()
        where = f"{part!r}" if part == text else f"{part!r} in {text!r}"
        if not part:
            raise UsageError(f"empty component in noise spec {text!r}; join components with '+'")
        try:
            parts.append(_parse_component(part))
        except UsageError as e:
            msg = str(e)
            if msg.startswith("unknown noise"):
                # "unknown noise 'gausian' in 'gausian:0.5'; valid: ..."
                head, _, tail = msg.partition(";")
                raise UsageError(f"{head} in {text!r};{tail}") from None
            raise UsageError(f"bad noise spec {where}: {msg}") from None
    return parts[0] if len(parts) == 1 else Compose(tuple(parts))


def list_noises() -> list[str]:
    """Names of all registered noise models."""
    return NOISES.names()


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not is_whole(seed):  # numpy integers are seeds too
        raise UsageError(f"noise seed must be an int or a torch.Generator, got {type(seed).__name__}")
    if not -(2**63) <= int(seed) < 2**64:  # what a torch generator's 64-bit seed can hold
        raise UsageError(f"noise seed {int(seed)} is out of range; use an int in [-2**63, 2**64)")
    return torch.Generator().manual_seed(int(seed))


def add_noise(x: Tensor, spec: str | Noise, seed: int | torch.Generator) -> Tensor:
    """Corrupt `x` with the noise `spec`; an int seed makes a fresh CPU generator, a Generator is used as is.

    Example:
        >>> noisy = add_noise(torch.rand(8, 1, 28, 28), "gaussian:0.5", seed=0)
    """
    noise, generator = parse_noise(spec), _generator(seed)
    if isinstance(x, Tensor) and x.is_floating_point():
        check_unit_range(x, "add_noise: images")
    return noise(x, generator)


def check_unit_range(x: Tensor, what: str) -> None:
    """Refuse values outside [0, 1] (NaN included) with one line; uint8 data scaled by 255 is the usual cause."""
    if x.numel() == 0:
        return
    if torch.isnan(x).any():
        raise UsageError(f"{what} must lie in [0, 1], but holds NaN values")
    lo, hi = x.min().item(), x.max().item()
    if not (lo >= 0.0 and hi <= 1.0):
        hint = " (uint8 data: divide by 255)" if 1.0 < hi <= 255.0 and lo >= 0.0 else ""
        raise UsageError(f"{what} must lie in [0, 1], got values from {lo:g} to {hi:g}{hint}")


def make_noisy(x: Tensor, spec: str | Noise, seed: int) -> Tensor:
    """The fixed noisy copy of an evaluation set: image i is corrupted by its own generator, seeded from (seed, i).

    So image i's noise depends only on the seed, the spec, its index and the image itself: the first k images
    of a set get the same noise whether 100 or 10,000 are evaluated, on any device and whatever batch size is
    used afterwards.

    Example:
        >>> noisy_test = make_noisy(test_images, "gaussian:0.3", seed=1234)
    """
    if isinstance(seed, torch.Generator):
        raise UsageError(
            "make_noisy takes an int seed (it makes its own fresh generator); use add_noise for a Generator"
        )
    noise, g = parse_noise(spec), _generator(seed)
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        return noise(x, g)  # the noise's own checks, or an empty batch
    if x.is_floating_point():
        check_unit_range(x, "make_noisy: images")
    # One generator per image, not one for the whole set: a whole-set draw would tie each image's noise to
    # the set's size (per-image levels, occlusion offsets and a composition's second component are drawn
    # after all the pixels, and torch redraws the tail of a normal draw whose length is not a multiple of 16).
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        out[i : i + 1] = noise(x[i : i + 1], g.manual_seed(image_seed(seed, i)))
    return out


def image_seed(seed: int, index: int) -> int:
    """Image `index`'s 64-bit noise seed within a set seeded `seed`: hashed, so that (seed, index + 1) and
    (seed + 1, index) share nothing.

    Example:
        >>> image_seed(1234, 0) != image_seed(1235, 0) != image_seed(1234, 1)
        True
    """
    return derive_seed(seed, index)


def derive_seed(*parts: object) -> int:
    """A 64-bit seed hashed from `parts` (joined by ":"), for a generator of its own; any whole number goes in.

    Arithmetic such as seed * 1_000_003 + epoch overflows torch's 64-bit seeds for large seeds, and puts
    nearby seeds' draws next to each other; a hash does neither.

    Example:
        >>> len({derive_seed("order", 1234, 0), derive_seed("order", 1234, 1), derive_seed("crops", 1234, 0)})
        3
    """
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
