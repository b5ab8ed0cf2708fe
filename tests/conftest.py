"""Shared test set-up: quiet TensorFlow logs, and small fixtures every test file may use."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfvision  # noqa: E402,F401  (first: its TensorFlow settings apply before any test imports TensorFlow)


def pytest_collection_modifyitems(items):
    """Slow tests first (the order within each group kept): `make test` runs two workers, and a long test
    handed out last would leave the other worker idle while it finishes."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
