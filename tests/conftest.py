"""Shared test set-up: quiet TensorFlow logs, and small fixtures every test file may use."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
