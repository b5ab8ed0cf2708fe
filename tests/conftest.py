"""Shared test set-up: quiet TensorFlow logs, and small fixtures every test file may use."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfvision  # noqa: E402,F401  (first: its TensorFlow settings apply before any test imports TensorFlow)
