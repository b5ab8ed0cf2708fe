"""Strategies from config: errors for bad TF_CONFIG / no TPU, chief selection, and real distributed training
(MirroredStrategy on 2 logical CPUs against the default strategy; two MultiWorkerMirroredStrategy workers)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf

from multiworker_worker import train
from tfvision.training import strategy as strategy_lib

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 120  # seconds; a hang fails the test instead of blocking the suite


def tf_config(ports, index):
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "TF_CONFIG environment variable is not set"),
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
        ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', "list of 'host:port'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "no 'task'"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "not a job"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "out of range"),
    ],
)
def test_bad_tf_config_is_explained(text, message):
    with pytest.raises(ValueError, match=message):
        strategy_lib.check_tf_config({"TF_CONFIG": text})


def test_good_tf_config_parses():
    config = strategy_lib.check_tf_config({"TF_CONFIG": tf_config([1111, 2222], 1)})
    assert config["task"] == {"type": "worker", "index": 1}


def test_multi_worker_without_tf_config_fails_clearly(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable is not set"):
        strategy_lib.create_strategy("multi_worker")


def test_tpu_without_a_tpu_fails_clearly(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(RuntimeError, match="train.strategy is 'tpu' but a TPU .* could not be reached"):
        strategy_lib.create_strategy("tpu")


def test_default_and_unknown_names():
    assert strategy_lib.create_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="unknown strategy 'horovod'"):
        strategy_lib.create_strategy("horovod")
    with pytest.raises(ValueError, match="num_devices must be >= 1"):
        strategy_lib.configure_cpu_devices(0)


def test_chief_selection():
    def fake(jobs, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(jobs), task_type=task_type, task_id=task_id
        )
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert strategy_lib.is_chief(tf.distribute.get_strategy())
    assert strategy_lib.task_name(tf.distribute.get_strategy()) == "local"
    assert strategy_lib.is_chief(fake(workers, "worker", 0))
    assert not strategy_lib.is_chief(fake(workers, "worker", 1))
    assert strategy_lib.task_name(fake(workers, "worker", 1)) == "worker-1"
    with_chief = dict(workers, chief=["127.0.0.1:3"])
    assert strategy_lib.is_chief(fake(with_chief, "chief", 0))
    assert not strategy_lib.is_chief(fake(with_chief, "worker", 0))


# Runs in a fresh process: logical devices must be configured before TensorFlow initialises.
MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests_dir!r})
    from tfvision.training import configure_cpu_devices
    devices = configure_cpu_devices(2)
    from multiworker_worker import tiny_segmenter, pattern_pairs
    from tfvision.config import ExperimentConfig
    from tfvision.losses import SegmentationLoss
    from tfvision.training import Trainer

    out = {{"devices": [d.name for d in devices]}}
    for name in ("default", "mirrored"):
        config = ExperimentConfig()
        config.train.strategy = name
        config.train.epochs = 3
        config.train.schedule = "constant"
        config.train.learning_rate = 0.05
        config.train.model_dir = {model_dir!r} + "/" + name
        trainer = Trainer(config, tiny_segmenter, loss=SegmentationLoss())
        history = trainer.fit(pattern_pairs(num_images=32, batch_size=8), verbose=0)
        out[name] = {{
            "replicas": trainer.strategy.num_replicas_in_sync,
            "losses": history.history["loss"],
            "weights": [w.tolist() for w in trainer.model.get_weights()],
        }}
    try:
        configure_cpu_devices(3)
        out["late_error"] = None
    except RuntimeError as e:
        out["late_error"] = str(e)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("mirrored"))
    script = MIRRORED_SCRIPT.format(tests_dir=TESTS_DIR, model_dir=model_dir)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_default_strategy(mirrored_run):
    assert len(mirrored_run["devices"]) == 2
    default, mirrored = mirrored_run["default"], mirrored_run["mirrored"]
    assert (default["replicas"], mirrored["replicas"]) == (1, 2)
    # The model learns (so matching losses mean something) ...
    assert default["losses"][-1] < 0.7 * default["losses"][0]
    # ... and two replicas on half batches each follow the single-device run step for step.
    np.testing.assert_allclose(mirrored["losses"], default["losses"], rtol=1e-4)
    for a, b in zip(mirrored["weights"], default["weights"]):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_configure_cpu_devices_too_late_says_so(mirrored_run):
    assert "too late" in mirrored_run["late_error"]
    assert "before any other TensorFlow work" in mirrored_run["late_error"]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_together(tmp_path):
    ports = free_ports(2)
    model_dir = str(tmp_path / "run")
    workers = [
        subprocess.Popen(
            [sys.executable, os.path.join(TESTS_DIR, "multiworker_worker.py"), model_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, TF_CONFIG=tf_config(ports, index), TF_CPP_MIN_LOG_LEVEL="2"),
        )
        for index in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=TIMEOUT))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [r["task"] for r in results] == [0, 1]
    assert results[0]["losses"] == pytest.approx(results[1]["losses"], rel=1e-6)
    assert results[0]["weights_sum"] == pytest.approx(results[1]["weights_sum"], rel=1e-6)
    # Each worker took half of every global batch; together they follow a single-process run.
    single = train(str(tmp_path / "single"), strategy="default")
    assert results[0]["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert results[0]["weights_sum"] == pytest.approx(single["weights_sum"], rel=1e-4, abs=1e-4)
    # The chief wrote the run folder, the other worker its own.
    assert os.path.isfile(os.path.join(model_dir, "checkpoints", "last.keras"))
    assert os.path.isfile(os.path.join(model_dir, "workers", "worker-1", "checkpoints", "last.keras"))
