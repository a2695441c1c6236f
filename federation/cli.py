"""`appliance federate` (registered into the core CLI)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, parsers: dict[str, argparse.ArgumentParser]) -> None:
    """Add the federation subcommands to the `appliance` CLI (filled in by the federation work)."""
