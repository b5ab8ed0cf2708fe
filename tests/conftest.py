"""Shared test set-up: quiet TensorFlow logs, and small fixtures every test file may use."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfvision  # noqa: E402,F401  (first: its TensorFlow settings apply before any test imports TensorFlow)

import pytest  # noqa: E402


def _share_the_cores_among_workers():
    """Under `make test`'s xdist workers, each worker's TensorFlow gets its share of the cores as op threads:
    two workers with two threads each on two cores made the training tests ~13% slower (spinning threads)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import tensorflow as tf

        threads = max(1, (os.cpu_count() or 1) // workers)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


_share_the_cores_among_workers()


def pytest_collection_modifyitems(items):
    """Slow tests first (the order within each group kept): `make test` runs two workers, and a long test
    handed out last would leave the other worker idle while it finishes."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def cpuinfo_file(tmp_path):
    """fn(name, text) -> path of a /proc/cpuinfo stand-in with that text: the CPU-feature choices under test
    read these instead of the machine's own."""

    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write
