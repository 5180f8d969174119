"""Every config key says what it means: `--show-config` prints each one's one-line help (core.config.setting)."""

from __future__ import annotations

import dataclasses
import importlib
import typing

import pytest

from rlhflab.cli import STAGES, describe_config, main
from rlhflab.core.config import setting


def config_classes() -> list[type]:
    """Every stage's config class, the pipeline's, and every section nested in them."""
    from rlhflab import pipeline

    todo = [getattr(importlib.import_module(m), c) for m, c, _, _ in STAGES.values()] + [pipeline.PipelineConfig]
    seen: list[type] = []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            todo += [t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)]
    return seen


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_key_has_a_one_line_meaning(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help", "").strip()]
    assert not missing, f"{cls.__name__}: no help for {missing}"
    multiline = [f.name for f in dataclasses.fields(cls) if "\n" in f.metadata.get("help", "")]
    assert not multiline, f"{cls.__name__}: help on more than one line for {multiline}"


def test_show_config_prints_the_meaning_after_the_default(capsys):
    assert main(["rm", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "  data.dev_fraction (float) = 0.15  # share of posts held out as the dev split" in out
    assert "  optim:  # AdamW and its learning-rate schedule" in out


def test_a_help_is_one_line():
    with pytest.raises(ValueError, match="one line"):
        setting(1, "two\nlines")


def test_a_field_without_help_is_listed_without_a_comment():
    @dataclasses.dataclass
    class Plain:
        x: int = 1
        y: int = setting(2, "the y")

    assert describe_config(Plain) == ["  x (int) = 1", "  y (int) = 2  # the y"]
