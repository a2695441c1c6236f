"""The one TOML reader: errors name the file, the table, the unknown and the known keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.tomlconfig import check_keys, read_toml, table
from federation.daemon_config import load_daemon_config
from serving.config import load_config as load_serving_config


@dataclass
class Example:
    alpha: int = 1
    beta: str = ""


def test_reads_a_file_and_its_tables(tmp_path: Path):
    path = tmp_path / "ok.toml"
    path.write_text('top = 1\n[example]\nalpha = 2\nbeta = "b"\n')
    data = read_toml(path)
    assert data["top"] == 1
    assert table(data, "example", "ok.toml") == {"alpha": 2, "beta": "b"}
    assert table(data, "absent", "ok.toml") == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[example\n", r"bad.toml: cannot read thing: invalid TOML: .*line 1"),
        (b"alpha = \xff\n", r"bad.toml: cannot read thing: not UTF-8 text"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_toml(path, "thing")


def test_a_missing_file_names_the_file(tmp_path: Path):
    with pytest.raises(ValueError, match=r"missing.toml: cannot read thing: No such file"):
        read_toml(tmp_path / "missing.toml", "thing")


def test_a_table_that_is_not_a_table(tmp_path: Path):
    with pytest.raises(ValueError, match=r"x.toml: \[example\] must be a table, got int"):
        table({"example": 3}, "example", "x.toml")


def test_unknown_keys_name_the_table_and_the_known_keys():
    check_keys({"alpha": 1}, Example, "x.toml [example]")
    with pytest.raises(
        ValueError,
        match=r"x.toml \[example\]: unknown key\(s\) \['gamma'\]; known: \['alpha', 'beta'\]",
    ):
        check_keys({"alpha": 1, "gamma": 2}, Example, "x.toml [example]")


@pytest.mark.parametrize(
    ("text", "load", "where"),
    [
        ("[train]\nepochz = 3\n", load_config, r"\[train\]"),
        (
            '[serving]\npackage = "p"\nthreds = 2\n',
            lambda p: load_serving_config(p, {}),
            r"\[serving\]",
        ),
        ('[daemon]\nhospital = "a"\nthreds = 2\n', load_daemon_config, r"\[daemon\]"),
    ],
)
def test_every_config_file_reports_unknown_keys_alike(tmp_path: Path, text: str, load, where: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"c.toml {where}: unknown key\(s\) \[.*\]; known: \["):
        load(path)
    path.write_text("[broken\n")
    with pytest.raises(ValueError, match=r"c.toml: cannot read .*config: invalid TOML"):
        load(path)
