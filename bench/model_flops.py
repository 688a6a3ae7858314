"""Parameters and forward FLOPs per 28x28 image of every registered model (and the recipes' variants).

    python bench/model_flops.py [--recipes]

FLOPs come from torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions, a multiply-add = 2;
pooling, activations and interpolation are not counted). A measurement script, not a test.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from dae.models import create_model, list_models
from dae.recipes import get_recipe, list_recipes


def measure(name: str, kwargs: dict, batch: int = 4) -> tuple[int, float, tuple[int, ...]]:
    """(parameters, forward FLOPs per image, code-layer shape) at 1x28x28."""
    model = create_model(name, **kwargs).eval()
    x = torch.rand(batch, 1, 28, 28)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    code = tuple(model.encode(model.pad(x)[0]).shape[1:])
    return model.num_parameters(), counter.get_total_flops() / batch, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", action="store_true", help="also measure every recipe's model variant")
    args = parser.parse_args()
    rows = [(name, name, {}) for name in list_models()]
    if args.recipes:
        rows += [(r, get_recipe(r).model, dict(get_recipe(r).model_kwargs)) for r in list_recipes()]
    print(f"{'model':<28} {'params':>9} {'MFLOPs/img':>11}  code (C, H, W) at 28x28")
    for label, name, kwargs in rows:
        params, flops, code = measure(name, kwargs)
        print(f"{label:<28} {params:>9,d} {flops / 1e6:>11.2f}  {code}")


if __name__ == "__main__":
    main()
