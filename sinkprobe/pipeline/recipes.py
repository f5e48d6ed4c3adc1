"""Recipes: plain TOML files under ``training/`` (one per experiment of the paper's Table A1),
read into typed configs; any field can be overridden as ``section.field=value``."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sinkprobe.data.sources import CORPUS_LOADERS
from sinkprobe.training.unlearn import UnlearnConfig

DATA_SOURCES = tuple(CORPUS_LOADERS)  # the names recipes may give as [data] source


@dataclass(frozen=True)
class DataSpec:
    source: str = "embedded"
    path: str = ""
    # Multiple-choice test files, for corpora without KnowMem/VerbMem sets (WMDP):
    eval_forget: str = ""  # e.g. WMDP-bio questions: UE (clean) and BE (with the trigger)
    eval_utility: str = ""  # e.g. MMLU: UT
    eval_truthfulqa: str = ""  # TruthfulQA MC1 file: a second UT column (the paper's UT-TQA), any corpus


@dataclass(frozen=True)
class Recipe:
    name: str
    original: str  # θ_o folder; "" = the embedded study's own θ_o
    unlearned: str  # θ_u folder, the D_f reference of value-norm alignment
    data: DataSpec
    unlearn: UnlearnConfig


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value: write e.g. unlearn.lr=1e-4")
        key, value = item.split("=", 1)
        *section, field = key.strip().split(".")
        target = raw
        for part in section:
            target = target.setdefault(part, {})
        target[field] = _parse_value(value.strip())
    return raw


def recipe_from_dict(raw: dict, name: str = "recipe") -> Recipe:
    allowed = {"name", "original", "unlearned", "data", "unlearn"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(
            f"unknown recipe field(s) {', '.join(unknown)}: top-level fields are {', '.join(sorted(allowed))}"
        )
    data = dict(raw.get("data", {}))
    allowed_data = {"source", "path", "eval_forget", "eval_utility", "eval_truthfulqa"}
    unknown = sorted(set(data) - allowed_data)
    if unknown:
        raise ValueError(f"unknown [data] field(s) {', '.join(unknown)}: use {', '.join(sorted(allowed_data))}")
    spec = DataSpec(**data)
    if spec.source not in DATA_SOURCES:
        raise ValueError(f"unknown data source {spec.source!r}: use one of {', '.join(DATA_SOURCES)}")
    return Recipe(
        name=str(raw.get("name", name)),
        original=str(raw.get("original", "")),
        unlearned=str(raw.get("unlearned", "")),
        data=spec,
        unlearn=UnlearnConfig.from_dict(dict(raw.get("unlearn", {}))),
    )


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe at {path}: give a TOML file such as training/embedded/npo.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e}): fix the file") from None
    return recipe_from_dict(apply_overrides(raw, list(overrides)), name=path.stem)


def with_unlearn(recipe: Recipe, **changes) -> Recipe:
    """A variant of a recipe (the study sweeps placements, λ and seeds this way)."""
    return replace(recipe, unlearn=UnlearnConfig.from_dict({**asdict(recipe.unlearn), **changes}))
