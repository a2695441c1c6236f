"""Errors the CLI and services report without a traceback (kept free of heavy imports)."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """The base model cannot be found or read; the message says which path and why."""


class PackageError(ValueError):
    """A package is unreadable, incomplete, or does not belong to the base it is loaded onto."""
