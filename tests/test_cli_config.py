"""Pydantic configs generate click options; `--config run.yaml` < explicit options; errors are one line."""

from __future__ import annotations

from typing import Literal

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from compress.cli.config import config_options, load_config
from compress.errors import CompressError


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    method: Literal["a", "b"] = Field("a", description="Which method.")
    steps: int = Field(10, ge=1, description="Steps.")
    lr: float = Field(1e-5, gt=0)
    ratio: float | None = Field(None, ge=0, le=1)
    shuffle: bool = True
    hidden: int = Field(3, json_schema_extra={"cli": False})


@click.command()
@click.argument("model")
@config_options(RunConfig, exclude=("model",))
def cmd(model, **values):
    cfg = load_config(RunConfig, values, click.get_current_context(), model=model)
    click.echo(repr(cfg.model_dump()))


def run(args):
    res = CliRunner().invoke(cmd, args, standalone_mode=False, catch_exceptions=True)
    return res


def test_options_generated_with_types_bounds_and_help():
    names = {p.name: p for p in cmd.params}
    assert set(names) == {"model", "method", "steps", "lr", "ratio", "shuffle", "config_file"}
    assert isinstance(names["method"].type, click.Choice) and tuple(names["method"].type.choices) == ("a", "b")
    assert isinstance(names["steps"].type, click.IntRange) and names["steps"].type.min == 1
    assert names["lr"].type.min == 0 and names["lr"].type.min_open
    assert names["method"].help == "Which method."
    r = run(["m", "--steps", "0"])
    assert isinstance(r.exception, click.BadParameter)


def test_layers_defaults_file_cli(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("method: b\nsteps: 5\nlr: 0.5\nno-such: 1\n")
    r = run(["m", "--config", str(f)])
    assert isinstance(r.exception, CompressError) and "unknown option 'no_such'" in str(r.exception)
    f.write_text("method: b\nsteps: 5\nhidden: 7\nshuffle: false\n")
    r = run(["m", "--config", str(f), "--steps", "8"])
    out = eval(r.output)  # noqa: S307 - our own repr
    assert out == {"model": "m", "method": "b", "steps": 8, "lr": 1e-5, "ratio": None, "shuffle": False, "hidden": 7}
    # an explicit option equal to the default still wins over the file
    r = run(["m", "--config", str(f), "--method", "a"])
    assert eval(r.output)["method"] == "a"  # noqa: S307


def test_file_values_are_validated_with_the_option_name(tmp_path):
    f = tmp_path / "run.json"
    f.write_text('{"ratio": 3}')
    r = run(["m", "--config", str(f)])
    assert isinstance(r.exception, CompressError)
    assert str(r.exception).startswith("invalid --ratio (in ") and "less than or equal to 1" in str(r.exception)
    f.write_text("[1, 2]")
    assert "must be a mapping" in str(run(["m", "--config", str(f)]).exception)
    with pytest.raises(CompressError, match="not found"):
        load_config(RunConfig, {"config_file": str(tmp_path / "nope.yaml")}, None, model="m")


class NeedsMethod(BaseModel):
    method: Literal["a", "b"] = Field(..., description="Which method.")


@click.command()
@config_options(NeedsMethod)
def needs(**values):
    click.echo(load_config(NeedsMethod, values, click.get_current_context()).method)


def test_a_required_option_left_out_is_named(tmp_path):
    r = CliRunner().invoke(needs, [], standalone_mode=False, catch_exceptions=True)
    assert isinstance(r.exception, CompressError) and str(r.exception) == "missing option --method"
    f = tmp_path / "run.yaml"
    f.write_text("method: b\n")
    assert CliRunner().invoke(needs, ["--config", str(f)], standalone_mode=False).output.strip() == "b"
