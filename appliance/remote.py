"""`appliance annotate`: on the local package, or with `--remote` on a serving endpoint.

The core owns the flags; annotating remotely is done by the function an installed package
registers in the `appliance.remote_annotator` entry-point group (`serving` registers one), so
the core never imports that package. Local annotation imports torch; remote annotation does not.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from appliance.readers import read_text_file

GROUP = "appliance.remote_annotator"


class RemoteAnnotator(Protocol):
    """Annotate `text` on the endpoint `target` (HOST:PORT); TLS when `ca` is set, mTLS with
    `cert` and `key`. Returns spans as `appliance annotate` prints them; raises
    `appliance.exits.CommandError` for a failed call."""

    def __call__(
        self, target: str, text: str, *, ca: Path | None, cert: Path | None, key: Path | None
    ) -> list[dict[str, Any]]: ...


def remote_annotator() -> RemoteAnnotator:
    """The one registered remote annotator."""
    points = sorted(entry_points(group=GROUP), key=lambda p: p.name)
    if not points:
        raise ValueError("annotate --remote: no remote annotator is installed (serving adds one)")
    if len(points) > 1:
        names = ", ".join(f"{p.name} ({p.value})" for p in points)
        raise ValueError(f"annotate --remote: several remote annotators are installed: {names}")
    annotator: RemoteAnnotator = points[0].load()
    return annotator


def annotate(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.remote is None:
        if args.package is None:
            raise ValueError("annotate: give --package (local) or --remote HOST:PORT")
        if args.ca or args.cert or args.key:
            raise ValueError("annotate: --ca, --cert and --key apply only with --remote")
        from appliance import commands  # torch: only for local annotation

        return commands.annotate(args)
    if args.package is not None:
        raise ValueError("annotate: give --package (local) or --remote HOST:PORT, not both")
    text = args.text if args.text is not None else read_text_file(args.file)
    return remote_annotator()(args.remote, text, ca=args.ca, cert=args.cert, key=args.key)
