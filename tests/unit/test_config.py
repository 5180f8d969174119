from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlhflab.core.config import ConfigError, load_config, parse_override, require


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    limit: int | None = None
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "steps: 20\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.lr=2e-5", "limit=7", "mode=b"])
    assert cfg.steps == 20 and cfg.inner.lr == 2e-5 and cfg.limit == 7 and cfg.mode == "b"
    assert cfg.name == "x" and cfg.inner.betas == (0.9, 0.95)


def test_int_is_accepted_for_float_and_yaml_exponent_string(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "inner:\n  lr: 1\n"), ["inner.lr=1e-5"])
    assert cfg.inner.lr == 1e-5 and isinstance(cfg.inner.lr, float)


@pytest.mark.parametrize(
    "yaml_text, overrides, key",
    [
        ("stepz: 3\n", [], "stepz"),
        ("", ["inner.lrr=1"], "inner.lrr"),
        ("steps: many\n", [], "steps"),
        ("", ["inner.lr=fast"], "inner.lr"),
        ("", ["mode=c"], "mode"),
        ("", ["flag=3"], "flag"),
        ("", ["steps=true"], "steps"),
        ("inner: 3\n", [], "inner"),
        ("", ["inner.betas=[1, x]"], "inner.betas[1]"),
    ],
)
def test_bad_key_or_type_names_the_key(tmp_path, yaml_text, overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, write(tmp_path, yaml_text), overrides)
    assert key in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "steps: [1\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))


def test_override_syntax():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("s=hello world") == ("s", "hello world")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("no-equals")


def test_every_shipped_profile_loads():
    """Each configs/<stage>/<profile>.yaml must load into its stage's dataclass (no stale keys)."""
    from pathlib import Path

    from rlhflab.cli import STAGES

    configs = Path(__file__).resolve().parents[2] / "configs"
    checked = 0
    for stage, (module_name, cls_name, _, _) in STAGES.items():
        module = __import__(module_name, fromlist=[cls_name])
        for path in sorted((configs / stage).glob("*.yaml")):
            load_config(getattr(module, cls_name), path)
            checked += 1
    assert checked >= 8


@dataclass
class Checked:
    rate: float = 0.5

    def __post_init__(self) -> None:
        require(0 <= self.rate <= 1, "rate", f"must be in [0, 1], got {self.rate}")


@dataclass
class HoldsChecked:
    part: Checked = field(default_factory=Checked)


def test_post_init_check_names_the_whole_key_path(tmp_path):
    """The one validation rule: a dataclass checks its own fields in __post_init__ (require -> a ValueError that
    names the field), and from_dict reports the key's whole path."""
    with pytest.raises(ValueError, match=r"^rate: must be in \[0, 1\], got 2"):
        Checked(rate=2.0)
    with pytest.raises(ConfigError, match=r"^part\.rate: must be in \[0, 1\], got 2\.0 \(in .*c\.yaml\)$"):
        load_config(HoldsChecked, write(tmp_path, "part:\n  rate: 2\n"))
    assert load_config(HoldsChecked, None, ["part.rate=1"]).part.rate == 1.0


@pytest.mark.parametrize("stage, overrides, message", [
    ("sft", ["batch_size=16", "micro_batch_size=3"], r"^batch_size: batch_size=16 is not a multiple of "
                                                     r"micro_batch_size=3"),
    ("sft", ["micro_batch_size=0"], r"^micro_batch_size: must be positive"),
    ("sft", ["data.limit_eval=-1"], r"^data\.limit_eval: must be >= 0 or None"),
    ("rm", ["data.dev_fraction=1.5"], r"^data\.dev_fraction: must be in \[0, 1\], got 1\.5"),
    ("rm", ["batch_size=0"], r"^batch_size: must be positive"),
    ("simulate-labels", ["random_rate=2"], r"^random_rate: must be in \[0, 1\]"),
    ("simulate-labels", ["temperature=-1"], r"^temperature: must be >= 0"),
])
def test_stage_configs_check_their_own_values(stage, overrides, message):
    pytest.importorskip("torch")
    from rlhflab.cli import STAGES

    module_name, cls_name, _, _ = STAGES[stage]
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, overrides)
