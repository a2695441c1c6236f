"""`appliance serve` and `appliance annotate --remote` (registered into the core CLI)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Add the serving subcommands to the `appliance` CLI (filled in by the serving work)."""
