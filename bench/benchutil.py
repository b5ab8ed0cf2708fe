"""Timing and reporting helpers shared by tfvision's benchmarks (medians, machine and versions)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time


def quick() -> bool:
    """BENCH_QUICK=1: a smoke run with tiny counts (numbers meaningless), used by the tests of bench/."""
    return bool(os.environ.get("BENCH_QUICK"))


def repeat_timed(fn, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Calls fn() `warmup` times untimed, then `repeats` times; returns seconds per call."""
    if quick():
        repeats, warmup = 2, 1
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values):
    return statistics.median(values)


def machine_info() -> dict:
    """CPU model, core count, Python and library versions: printed with every result table."""
    info = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
    except OSError:
        pass
    try:
        import keras
        import numpy
        import tensorflow as tf

        info.update(tensorflow=tf.__version__, keras=keras.__version__, numpy=numpy.__version__)
    except ImportError:
        pass
    return info


def md_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (header, key, format) with format like '{:.1f}' or ''."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key, "")
            cells.append(fmt.format(value) if fmt and value != "" else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as "a / b / c" (the 2 cores are shared: figures move with it)."""
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


TORCH_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench-venv-torch", "bin",
                            "python")


def bfloat16_note() -> str | None:
    """Why bfloat16 is not measured on this machine, or None to measure it.

    A CPU without bfloat16 instructions (AVX512-BF16, AMX-BF16, Arm BF16) only emulates bfloat16, several times
    slower than float32, so its figures would say nothing about the code. For the TensorFlow-side scripts only:
    it imports tfvision, which the torch environment does not have."""
    from tfvision.cpu_features import has_bfloat16

    if has_bfloat16() is False:
        return "this CPU has no bfloat16 instructions (it would only emulate them)"
    return None


def torch_reference(group: str, bfloat16: bool = True) -> tuple[dict, str]:
    """torchvision's figures for `group` (bench/torch_reference.py), measured now, in the torch environment;
    with bfloat16=False without its bfloat16 (autocast) figures.

    Returns (name -> median ms, a sentence for the report). Without the environment (`make bench` creates it;
    TFVISION_BENCH_TORCH_PYTHON names another interpreter) the dict is empty and the sentence says why.
    """
    import json

    python = os.environ.get("TFVISION_BENCH_TORCH_PYTHON", TORCH_PYTHON)
    if not os.path.exists(python):
        return {}, f"torchvision not measured: no torch environment at {python} (`make bench` creates it)."
    command = [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py"), group]
    if not bfloat16:
        command.append("--skip-bfloat16")
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # inherits BENCH_QUICK
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    versions = figures.pop("versions")
    return figures, (f"torchvision figures measured in this run, just before tfvision's ({versions}, "
                     "bench/torch_reference.py, 2 threads).")


def matmul_gflops(n: int, repeats: int) -> float:
    """Median GFLOP/s of an n x n float32 matmul in a tf.function: this machine's practical peak."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n), seed=1), tf.random.normal((n, n), seed=2)
    matmul = tf.function(tf.linalg.matmul)
    times = repeat_timed(lambda: matmul(a, b).numpy(), repeats=repeats, warmup=2)
    return 2.0 * n**3 / median(times) / 1e9


def graph_flops(fn, size: int) -> int:
    """FLOPs that `tf.compat.v1.profiler` counts in `fn` traced on one `[1, size, size, 3]` float32 image, with
    variables frozen to constants and convolutions outside XLA (the profiler does not look inside clusters)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tfvision.models.xla_convolutions import plain_convolutions

    with plain_convolutions():
        concrete = tf.function(fn).get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
