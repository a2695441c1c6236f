"""Federated nightly rounds over Flower: apps, strategy, privacy, updates, the nightly daemon."""
