"""Federated nightly rounds over Flower (filled by the federation issue)."""
