"""The docs cannot go stale: the configuration reference is regenerated and compared, every
config field and every proto element is documented, every alert has a runbook section, and every
relative link in the README and docs/ points at a file (and heading) that exists."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _generator() -> ModuleType:
    path = DOCS / "configuration_gen.py"
    spec = importlib.util.spec_from_file_location("configuration_gen", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_matches_the_code() -> None:
    gen = _generator()

    fresh = gen.render()

    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == fresh, "stale docs/configuration.md: run python docs/configuration_gen.py"


def test_every_config_field_has_help() -> None:
    gen = _generator()
    missing = [
        f"{table.cls.__name__}.{f.name}"
        for table in gen.TABLES
        for f in dataclasses.fields(table.cls)
        if not str(f.metadata.get("help", "")).strip()
    ]
    assert not missing, f"config fields without metadata help: {missing}"


def test_a_field_without_help_fails_the_render() -> None:
    # Prepare
    gen = _generator()

    @dataclasses.dataclass
    class Undocumented:
        size: int = dataclasses.field(default=1, metadata={"help": "documented"})
        colour: str = "red"

    # Execute / Assert
    with pytest.raises(gen.MissingHelp, match=r"Undocumented\.colour: no help text"):
        gen.render([gen.Table("t", "intro", Undocumented)])


def _proto_descriptor(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "ner.pb"
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"--descriptor_set_out={out}",
        "--include_source_info",
        str(ROOT / "proto/serving/api/ner.proto"),
    ]
    assert protoc.main(args) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]


def _documented_paths(file: descriptor_pb2.FileDescriptorProto) -> set[tuple[int, ...]]:
    return {
        tuple(loc.path)
        for loc in file.source_code_info.location
        if loc.leading_comments.strip() or loc.trailing_comments.strip()
    }


def test_every_rpc_message_field_and_enum_value_in_the_proto_is_commented(tmp_path: Path) -> None:
    # Paths per descriptor.proto: message_type 4 (field 2), enum_type 5 (value 2), service 6
    # (method 2).
    file = _proto_descriptor(tmp_path)
    documented = _documented_paths(file)
    wanted: dict[tuple[int, ...], str] = {}
    for i, message in enumerate(file.message_type):
        wanted[(4, i)] = message.name
        for j, field in enumerate(message.field):
            wanted[(4, i, 2, j)] = f"{message.name}.{field.name}"
    for i, enum in enumerate(file.enum_type):
        wanted[(5, i)] = enum.name
        for j, value in enumerate(enum.value):
            wanted[(5, i, 2, j)] = f"{enum.name}.{value.name}"
    for i, service in enumerate(file.service):
        wanted[(6, i)] = service.name
        for j, method in enumerate(service.method):
            wanted[(6, i, 2, j)] = f"{service.name}.{method.name}"

    missing = sorted(name for path, name in wanted.items() if path not in documented)

    assert len(wanted) > 40
    assert not missing, f"proto elements without a comment: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    text = markdown.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # headings inside code are not headings
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_alert_has_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "ansible/monitoring/alerts.yml").read_text(encoding="utf-8"))
    alerts = [r for group in rules["groups"] for r in group["rules"] if "alert" in r]
    anchors = _anchors(DOCS / "operations.md")

    without_section = [a["alert"] for a in alerts if a["alert"].lower() not in anchors]
    runbooks = {a["alert"]: a["annotations"].get("runbook_url") for a in alerts}
    wrong = {
        name: url
        for name, url in runbooks.items()
        if url is not None and url != f"docs/operations.md#{name.lower()}"
    }

    assert len(alerts) >= 8
    assert not without_section, f"alerts without a section in docs/operations.md: {without_section}"
    assert not wrong, f"runbook_url not pointing at the alert's own section: {wrong}"


def _links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize(
    "page",
    [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"
