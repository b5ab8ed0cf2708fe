"""Which `tf.distribute` strategy a run uses, made from its config name, and how many CPU devices it sees.

`create_strategy("mirrored")` replicates the model over every local device (all GPUs, or every logical CPU
device when there is no GPU); `multi_worker` reads the cluster from the `TF_CONFIG` environment variable;
`tpu` connects to a TPU. `configure_cpu_devices(n)` splits the host CPU into n logical devices so that
`mirrored` can be run and tested on a machine without accelerators; it must run before TensorFlow
initialises its devices.

Example:
    configure_cpu_devices(2)            # first thing in the program
    strategy = create_strategy("mirrored")
    with strategy.scope():
        model = build_model()
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def configure_cpu_devices(num_devices: int) -> list:
    """Splits the host CPU into `num_devices` logical devices (`/device:CPU:0` ... `CPU:n-1`).

    TensorFlow fixes its devices the first time it runs an op or lists logical devices, so call this before
    anything else touches TensorFlow. Calling it again with the same count is harmless.

    Args:
        num_devices: how many logical CPU devices to create, >= 1.

    Returns:
        The logical CPU devices (`tf.config.LogicalDevice`), `num_devices` of them.

    Raises:
        ValueError: `num_devices` < 1.
        RuntimeError: TensorFlow has already initialised its devices with another configuration.
    """
    if int(num_devices) < 1:
        raise ValueError(f"configure_cpu_devices: num_devices must be >= 1, got {num_devices}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(int(num_devices))]
        )
    except RuntimeError as e:
        current = len(tf.config.list_logical_devices("CPU"))
        raise RuntimeError(
            f"configure_cpu_devices({num_devices}) was called too late: TensorFlow has already initialised "
            f"its devices ({current} logical CPU device(s)), and they cannot change within a process. Call "
            "configure_cpu_devices first, before any other TensorFlow work (creating a tensor, a model or a "
            f"strategy), or run in a fresh process. ({e})"
        ) from None
    return tf.config.list_logical_devices("CPU")


def create_strategy(name: str = "default", devices=None, tpu: str | None = None) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` named by `config.train.strategy`.

    Args:
        name: `default` (`tf.distribute.get_strategy()`: no replication), `mirrored` (synchronous replicas on
            the local devices), `multi_worker` (synchronous replicas on every worker of the `TF_CONFIG`
            cluster) or `tpu`.
        devices: for `mirrored` only, the device names to replicate on; None = all GPUs, or all logical CPU
            devices when there is no GPU (see `configure_cpu_devices`).
        tpu: for `tpu` only, the TPU name or `grpc://` address; None = the TPU of this VM / `TPU_NAME`.

    Returns:
        The strategy. `multi_worker` and `tpu` must be created at the start of the program, before other
        TensorFlow work.

    Raises:
        ValueError: an unknown name, or `TF_CONFIG` missing or malformed for `multi_worker`.
        RuntimeError: no TPU could be reached for `tpu`.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver()
        )
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise ValueError(f"unknown strategy {name!r} (train.strategy); choose one of {list(STRATEGIES)}.")


def check_tf_config(environ=None) -> dict:
    """Parses and checks the `TF_CONFIG` environment variable that `multi_worker` needs.

    Args:
        environ: mapping to read `TF_CONFIG` from; None = `os.environ`.

    Returns:
        The parsed TF_CONFIG dict: `{"cluster": {"worker": ["host:port", ...], ...}, "task": {"type":
        "worker", "index": i}}`.

    Raises:
        ValueError: TF_CONFIG unset, not JSON, without a cluster of workers, or with a task that is not in
            the cluster; the message says what to set.
    """
    environ = os.environ if environ is None else environ
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
        '"index": 0}}\' (the same cluster on every worker, each with its own index)'
    )
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        raise ValueError(
            "train.strategy is 'multi_worker' but the TF_CONFIG environment variable is not set; set it on "
            f"every worker, e.g. {example}, or use strategy 'mirrored' for one machine."
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {example}.") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {text!r}; expected e.g. {example}.")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no 'cluster' mapping of job name -> addresses; expected e.g. {example}.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(
                f"TF_CONFIG cluster['{job}'] must be a list of 'host:port' strings, got {addresses!r}."
            )
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG cluster has no 'worker' (or 'chief') job; expected e.g. {example}.")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            "TF_CONFIG has no 'task' with 'type' and 'index' saying which cluster member this process is; "
            f"expected e.g. {example}."
        )
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ValueError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster {sorted(cluster)}.")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG task index {index!r} is out of range for job '{task_type}' with "
            f"{len(cluster[task_type])} address(es); indices run from 0."
        )
    return config


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's shared files (checkpoints, logs, config).

    True without a cluster; in a cluster, for the `chief` task, or for worker 0 when there is no chief
    (the convention of `MultiWorkerMirroredStrategy`).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    jobs = resolver.cluster_spec().as_dict()
    if not jobs or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and int(resolver.task_id or 0) == 0 and "chief" not in jobs


def task_name(strategy: tf.distribute.Strategy) -> str:
    """`<task type>-<index>` of this process in its cluster (e.g. `worker-1`), or `local` without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None or not resolver.cluster_spec().as_dict():
        return "local"
    return f"{resolver.task_type}-{resolver.task_id}"


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        where = f"TPU {tpu!r}" if tpu else "a TPU (no name given and none found on this machine or in TPU_NAME)"
        raise RuntimeError(
            f"train.strategy is 'tpu' but {where} could not be reached: {e}. Run on a TPU VM, pass the TPU "
            "name or grpc:// address, or pick another strategy (default, mirrored, multi_worker)."
        ) from None
    return tf.distribute.TPUStrategy(resolver)
