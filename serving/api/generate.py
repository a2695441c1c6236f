"""Regenerate the committed gRPC code from `proto/` with grpc_tools (tests fail on any diff)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("serving/api/ner.proto", "serving/api/curation.proto")


def generate(out_dir: Path = ROOT) -> None:
    """Write each proto's _pb2.py, _pb2.pyi and _pb2_grpc.py under `out_dir`/serving/api."""
    for proto in PROTOS:
        args = [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / "proto" / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on proto/{proto}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
