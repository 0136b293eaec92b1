"""Config loading: every problem reported at once, with file and key; overrides apply."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lmforge.config import ConfigError, config_from_dict, load_config, parse_set_overrides, spec, to_dict


@dataclass
class Inner:
    shard_size: int = spec(50000, min=1, help="documents per shard")
    ratio: float = spec(0.5, min=0.0, max=1.0)


@dataclass
class Outer:
    name: str
    kind: Literal["hf", "local"] = "hf"
    inner: Inner = field(default_factory=Inner)
    paths: list[str] = field(default_factory=list)
    budget: Optional[int] = None

    def check(self) -> list[str]:
        return ["paths: required when kind is 'local'"] if self.kind == "local" and not self.paths else []


def test_valid_config_loads_with_defaults_and_types(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"name": "x", "inner": {"ratio": 1}, "_comment": "ignored"}))
    cfg = load_config(p, Outer)
    assert cfg.inner.shard_size == 50000 and cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio, float)
    assert to_dict(cfg)["inner"] == {"shard_size": 50000, "ratio": 1.0}


def test_all_problems_reported_at_once_with_file_and_key(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"kind": "s3", "inner": {"shard_size": 0, "ratoi": 0.1}, "paths": "a", "budget": "1M"}))
    with pytest.raises(ConfigError) as err:
        load_config(p, Outer)
    msg = str(err.value)
    for expected in ["name: required key is missing", "kind: must be one of", "inner.shard_size: must be >= 1",
                     "inner.ratoi: unknown key (did you mean 'ratio'?)", "paths: expected a list",
                     "budget: expected an integer or null"]:
        assert expected in msg, expected
    assert str(p) in msg and "6 problems" in msg


def test_cross_field_check_and_bool_is_not_int():
    with pytest.raises(ConfigError, match="paths: required when kind is 'local'"):
        config_from_dict({"name": "x", "kind": "local"}, Outer)
    with pytest.raises(ConfigError, match="shard_size: expected an integer"):
        config_from_dict({"name": "x", "inner": {"shard_size": True}}, Outer)


def test_overrides_take_precedence_and_are_validated():
    cfg = config_from_dict({"name": "x"}, Outer, overrides={"inner.shard_size": 7, "budget": None})
    assert cfg.inner.shard_size == 7
    with pytest.raises(ConfigError, match="inner.ratio: must be <= 1.0"):
        config_from_dict({"name": "x"}, Outer, overrides=parse_set_overrides(["inner.ratio=2"]))


def test_set_overrides_parse_json_values():
    assert parse_set_overrides(["a.b=3", "c=foo", "d=[1, 2]", "e=null"]) == {"a.b": 3, "c": "foo", "d": [1, 2], "e": None}
    with pytest.raises(ConfigError):
        parse_set_overrides(["novalue"])


def test_unreadable_json_names_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"name": "x",\n  oops}')
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON \(line 2"):
        load_config(p, Outer)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.json", Outer)


def test_a_problem_with_a_command_line_value_is_not_blamed_on_the_file(tmp_path):
    from lmforge.data.packing import PackConfig

    path = tmp_path / "pack.json"
    path.write_text(json.dumps({"seq_length": 0}))
    with pytest.raises(ConfigError) as raised:
        load_config(path, PackConfig, overrides={"seq_lenght": 512})
    text = str(raised.value)
    assert "command line: seq_lenght: unknown key (did you mean 'seq_length'?)" in text
    assert f"{path}: seq_length: must be >= " in text  # the file's own mistake keeps the file's name
