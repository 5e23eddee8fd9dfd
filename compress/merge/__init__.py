"""`compress merge`: mergekit-compatible model merging (linear ... sce) and FuseChat's VaRM, streamed.

    from compress.merge import merge
    merge("recipe.yml", "out")                                       # a mergekit YAML recipe
    merge(None, "out", method="varm", base="pivot", models=["t1", "t2"])   # shortcut
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compress.checkpoint.writer import DEFAULT_MAX_SHARD
from compress.errors import CompressError

__all__ = ["merge", "shortcut_recipe"]


def shortcut_recipe(method: str, base: str | None, models: list[str] | tuple[str, ...],
                    parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe the shortcut `--method M --base B A C` stands for.

    Methods without a base (linear) merge the base as one more model; the others merge the models
    into the base (the pivot).
    """
    from compress.merge.methods import get_method

    m = get_method(method)
    if not models:
        raise CompressError("no models to merge: give the models after the options")
    listed = [base, *models] if (base and not m.needs_base) else list(models)
    recipe: dict[str, Any] = {"merge_method": method, "models": [{"model": str(x)} for x in listed]}
    if base and m.needs_base:
        recipe["base_model"] = str(base)
    if parameters:
        recipe["parameters"] = dict(parameters)
    return recipe


def merge(recipe: str | os.PathLike[str] | dict[str, Any] | None, output: str | os.PathLike[str], *,
          method: str | None = None, base: str | None = None, models: list[str] | tuple[str, ...] = (),
          parameters: dict[str, Any] | None = None, device: str = "cpu", dtype: str | None = None,
          seed: int = 42, force: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD,
          threads: int | None = None, command: str | None = None) -> dict[str, Any]:
    """Merge checkpoints with a mergekit YAML recipe (path or dict) or the method/base/models shortcut."""
    import yaml

    from compress.checkpoint.writer import parse_size
    from compress.merge.execute import check_threads, execute
    from compress.merge.plan import build_plan
    from compress.merge.recipe import load_recipe, parse_recipe

    check_threads(threads)
    parse_size(max_shard_size)
    recipe_dir = None
    if recipe is None:
        if method is None:
            raise CompressError("give a recipe file, or --method with the models to merge")
        recipe = shortcut_recipe(method, base, models, parameters)
    elif method is not None or models:
        raise CompressError("give either a recipe file or --method with models, not both")
    if isinstance(recipe, dict):
        text = yaml.safe_dump(recipe, sort_keys=False)
        rec, _ = parse_recipe(text, "recipe")
        lines: dict = {}  # line numbers of a generated recipe would mean nothing to the user
    else:
        rec, lines, text = load_recipe(recipe)
        recipe_dir = Path(recipe).resolve().parent
    plan = build_plan(rec, lines, text, recipe_dir, dtype=dtype)
    return execute(plan, output, device=device, seed=seed, force=force, max_shard_size=max_shard_size,
                   threads=threads, command=command)
