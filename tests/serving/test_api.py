"""The committed generated code matches proto/, the config refuses bad settings, offsets convert."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from serving.api.generate import ROOT, generate
from serving.config import ServingConfig, load_config
from serving.offsets import CODE_POINT, UTF8, UTF16, offset_table


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in (
        *("ner_pb2.py", "ner_pb2.pyi", "ner_pb2_grpc.py"),
        *("curation_pb2.py", "curation_pb2.pyi", "curation_pb2_grpc.py"),
    ):
        fresh, committed = tmp_path / "serving/api" / name, ROOT / "serving/api" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"regenerate {name}: python -m serving.api.generate"
        )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "exactly one of package"),
        ({"package": Path("p"), "registry": Path("r")}, "exactly one of package"),
        ({"package": Path("p"), "backend": "gguf"}, "backend: 'gguf' unknown"),
        ({"package": Path("p"), "max_note_chars": 0}, "max_note_chars: must be at least 1"),
        ({"package": Path("p"), "host": "0.0.0.0"}, "plaintext is allowed only on loopback"),
        ({"package": Path("p"), "production": True}, "production: requires mTLS"),
        ({"package": Path("p"), "tls_cert": Path("c")}, "set both or neither"),
        ({"package": Path("p"), "tls_client_ca": Path("ca")}, "mTLS needs tls_cert"),
    ],
)
def test_config_refuses(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServingConfig(**fields)  # type: ignore[arg-type]


def test_config_from_toml_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "serving.toml"
    toml.write_text('[serving]\npackage = "pkg"\nport = 7000\nmax_queue_delay_ms = 2.5\n')
    cfg = load_config(toml, {"port": 7001, "host": None})
    assert (cfg.package, cfg.port, cfg.max_queue_delay_ms, cfg.host) == (
        Path("pkg"),
        7001,
        2.5,
        "127.0.0.1",
    )
    toml.write_text('[serving]\npackage = "pkg"\nthreds = 2\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['threds'\]"):
        load_config(toml, {})
    assert ServingConfig(package=Path("p"), host="::1").host == "::1"


def test_offset_tables() -> None:
    text = "é😀患a"
    assert list(offset_table(text, CODE_POINT)) == [0, 1, 2, 3, 4]
    assert list(offset_table(text, UTF16)) == [0, 1, 3, 4, 5]
    assert list(offset_table(text, UTF8)) == [0, 2, 6, 9, 10]
