"""Recipes: typed sections, include, --set, validation messages, dump/load round trip."""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidcli.errors import RecipeError
from vidcli.recipe import (  # tomllib: the stdlib module, or tomli on Python 3.10
    SECTIONS,
    Recipe,
    dump_recipe,
    field_docs,
    load_recipe,
    recipe_from_dict,
    tomllib,
    write_resolved_recipe,
)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_when_no_file():
    assert load_recipe(None) == Recipe()


def test_file_values_are_typed(tmp_path):
    r = load_recipe(write(tmp_path / "r.toml", "[train]\nlr = 1\nmax_steps = 7\n"))
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)
    assert r.train.max_steps == 7


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path / "typo.toml", "[train]\nlrr = 1e-4\n")
    with pytest.raises(
        RecipeError, match=r"typo\.toml: \[train\] unknown key 'lrr' \(did you mean 'lr'\?\)"
    ):
        load_recipe(path)


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown section \[trian\] \(did you mean 'train'\?\)"):
        load_recipe(write(tmp_path / "r.toml", "[trian]\nlr = 1\n"))


def test_set_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(
        RecipeError, match=r"--set train.lr=abc: \[train\] lr = 'abc': expected a number"
    ):
        load_recipe(None, ["train.lr=abc"])
    with pytest.raises(RecipeError, match="expected an integer"):
        load_recipe(None, ["train.max_steps=1.5"])
    with pytest.raises(RecipeError, match="expected a bool"):
        load_recipe(None, ["ae.tiling=1"])


def test_set_parses_toml_literals():
    r = load_recipe(
        None,
        ["train.lr=3e-4", "train.betas=[0.9, 0.95]", "ae.tiling=false", "train.output=runs/x"],
    )
    assert r.train.lr == 3e-4
    assert r.train.betas == [0.9, 0.95]
    assert r.ae.tiling is False
    assert r.train.output == "runs/x"


def test_out_of_range_and_literal_choices():
    with pytest.raises(RecipeError, match=r"zero_stage = 4: out of range, allowed \[0, 3\]"):
        load_recipe(None, ["launcher.zero_stage=4"])
    with pytest.raises(RecipeError, match="expected one of 'constant', 'cosine'"):
        load_recipe(None, ["train.lr_schedule=linear"])


def test_include_precedence_and_relative_paths(tmp_path):
    (tmp_path / "base").mkdir()
    write(
        tmp_path / "base" / "base.toml", "[train]\nlr = 0.1\nmax_steps = 5\n[ae]\ntiling = false\n"
    )
    child = write(tmp_path / "child.toml", 'include = "base/base.toml"\n[train]\nlr = 0.2\n')
    r = load_recipe(child, ["train.max_steps=9"])
    assert (r.train.lr, r.train.max_steps, r.ae.tiling) == (0.2, 9, False)


def test_include_cycle_detected(tmp_path):
    write(tmp_path / "a.toml", 'include = "b.toml"\n')
    write(tmp_path / "b.toml", 'include = "a.toml"\n')
    with pytest.raises(RecipeError, match="include cycle"):
        load_recipe(tmp_path / "a.toml")


def test_error_names_the_included_file(tmp_path):
    write(tmp_path / "base.toml", "[dit]\npresett = 'x'\n")
    child = write(tmp_path / "child.toml", 'include = "base.toml"\n')
    with pytest.raises(RecipeError, match=r"base\.toml: \[dit\] unknown key 'presett'"):
        load_recipe(child)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(write(tmp_path / "bad.toml", "[train\n"))


def test_write_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(None, ["train.lr=0.5", "sample.flow_shift=3.0"])
    path = write_resolved_recipe(r, tmp_path / "out")
    assert load_recipe(path) == r
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_every_field_has_a_docstring():
    for name, cls in SECTIONS.items():
        documented = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
        assert not missing, f"[{name}] fields without docstring: {missing}"


def test_every_shipped_recipe_loads():
    recipes = sorted((REPO / "recipes").glob("*.toml"))
    for path in recipes:
        load_recipe(path)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e6)


@settings(max_examples=60, deadline=None)
@given(
    lr=finite,
    steps=st.integers(min_value=1, max_value=10**9),
    tiling=st.booleans(),
    output=st.text(min_size=1, max_size=20),
    betas=st.lists(st.floats(min_value=0, max_value=1), min_size=2, max_size=2),
    schedule=st.sampled_from(["constant", "cosine"]),
    flow_shift=st.none() | st.floats(min_value=0.1, max_value=20),
    overrides=st.dictionaries(st.sampled_from(["latent_channels", "depth"]), st.integers(1, 64)),
)
def test_load_dump_load_is_identity(
    lr, steps, tiling, output, betas, schedule, flow_shift, overrides
):
    recipe = recipe_from_dict(
        {
            "train": {
                "lr": lr,
                "max_steps": steps,
                "output": output,
                "betas": betas,
                "lr_schedule": schedule,
            },
            "ae": {"tiling": tiling, "overrides": overrides},
            "sample": {"flow_shift": flow_shift} if flow_shift is not None else {},
        }
    )
    again = recipe_from_dict(tomllib.loads(dump_recipe(recipe)))
    assert again == recipe
