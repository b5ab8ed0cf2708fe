"""Speed of tfvision's segmentation models on CPU, against the machine's fp32 matmul rate in the same run.

Models (random weights, `num_classes` 20, i.e. 21 outputs as for VOC), built with `tfvision.models.build_*`
from a `ModelConfig` with input shape `(None, None, 3)` and, as `build_model` does by default, the
convolutions oneDNN runs slowly on this CPU routed through XLA for float32 inference
(`tfvision.models.xla_convolutions`):
  * FCN-8s on VGG16 at 512x512;
  * SegNet, VGG16 encoder with pooling indices, `unpool` decoder, at 512x512;
  * U-Net from scratch at 256x256: the shapes config's depth 4 / base_filters 16, and base_filters 64 (the
    width of the common U-Nets).

Rows per model:
  * inference, batch 1 and 8: `model.predict_on_batch` after `model.compile()` - Keras' compiled predict step,
    what `model.predict` runs per batch (without its data-adapter overhead), and on a CPU-only machine not
    XLA-compiled (Keras resolves `jit_compile="auto"` to False there);
  * inference, batch 1, XLA: the same after `model.compile(jit_compile=True)` (what `train.jit_compile: true`
    gives a trainer's model). Keras refuses it for models with a layer that cannot be compiled (SegNet's
    argmax pooling), which the row then says;
  * inference, batch 1, export: `SegmentationServingModule.serving_default` on uint8 images, the function an
    export serves (resize/pad, model, softmax, crop and resize back, argmax; traced as exports are, every
    convolution on oneDNN), called in-process;
  * training: `train_on_batch` (SGD lr 1e-3 momentum 0.9, tfvision's `SegmentationLoss` cross entropy with
    ignore label 255; random labels), batch 2 at 512 and 8 at 256.

FLOPs: counted analytically, 2 x multiply-adds of every Conv2D / Conv2DTranspose / Dense layer from the built
layer shapes (elementwise ops, pooling and unpooling not counted), per image at the row's input size; the
`tf.compat.v1.profiler` count on the frozen inference graph is shown beside it as a check. Training rows use
3 x the forward FLOPs (forward + the two backward convolutions), the usual approximation.

Timing: default TF threading, one untimed warm-up call (tracing, XLA compilation: its time is shown as
"first call"), then timed calls, medians. The machine's 2 cores are shared with other users, so every timed
model call is paired with a 2048x2048 float32 `tf.linalg.matmul` (in a tf.function) run just before it, and
"% of matmul" is given three ways: wall-clock medians (the figure asked for), fastest calls (the least
disturbed ones), and CPU time (all threads of the process) against the matmul's CPU time - work done, whatever
share of the cores the process got. The CPU-time figure does not see idle cores (a variant that keeps one core
busy looks as efficient as one that keeps both busy): read it with the wall-clock columns. A 4096x4096 matmul
is measured at the start and end of the run for reference. About 5 minutes on a quiet machine, 7-14 under the
load of other users.

`--levers` measures instead, for each model at batch 1, what the usual speed levers give. Round-robin in one
process, sharing weights: every convolution on oneDNN (`model.xla_convolutions: false`), whole-model XLA,
`mixed_bfloat16` (oneDNN bf16, AMX where the CPU has it), and two prototypes that live here only: BatchNorm
folded into the preceding convolution, and (SegNet) unpooling without argmax indices, with and without XLA.
Each in its own process: `TF_ENABLE_ONEDNN_OPTS=0` (Eigen kernels) and `inter_op_parallelism_threads=1`.


Usage: python bench/segmentation.py [--out FILE] [--models fcn8s,segnet,unet16,unet64] [--levers]
BENCH_QUICK=1: a smoke run (64-pixel inputs, two timed calls; numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfvision  # noqa: E402,F401  (before TensorFlow: its settings, as `tfvision` users get them)

import benchutil  # noqa: E402

NUM_CLASSES = 20
MATMUL_N = 2048
# name -> (label, builder family, input size, training batch)
MODELS = {
    "fcn8s": ("FCN-8s, VGG16", "fcn", 512, 2),
    "segnet": ("SegNet, VGG16, unpool", "segnet", 512, 2),
    "unet16": ("U-Net depth 4, base 16 (shapes config)", "unet", 256, 8),
    "unet64": ("U-Net depth 4, base 64", "unet", 256, 8),
}
LEVERS = ("default", "plain_convolutions", "xla", "bf16", "bn_folded", "mask_unpool", "mask_unpool+xla", "onednn_off",
          "inter_op_1")


# --- Models and FLOPs ---


def model_config(key: str):
    from tfvision.config import BackboneConfig, FCNConfig, ModelConfig, SegNetConfig, UNetConfig

    family = MODELS[key][1]
    if family == "fcn":
        return ModelConfig(name="fcn", num_classes=NUM_CLASSES, backbone=BackboneConfig(name="vgg16"),
                           fcn=FCNConfig("8s"))
    if family == "segnet":
        return ModelConfig(name="segnet", num_classes=NUM_CLASSES, backbone=BackboneConfig(name="vgg16"),
                           segnet=SegNetConfig("unpool"))
    base = 16 if key == "unet16" else 64
    return ModelConfig(name="unet", num_classes=NUM_CLASSES, unet=UNetConfig(depth=4, base_filters=base))


def build(key: str, input_shape=(None, None, 3), xla_convolutions=True):
    """The model of `key`, as `build_model` makes it (convolutions through XLA as on this CPU by default,
    unless told not to)."""
    from tfvision.models import build_fcn, build_segnet, build_unet, use_xla_convolutions

    builder = {"fcn": build_fcn, "segnet": build_segnet, "unet": build_unet}[MODELS[key][1]]
    model = builder(model_config(key), input_shape=input_shape)
    if xla_convolutions:
        use_xla_convolutions(model)
    return model


def input_size(key: str) -> int:
    return 64 if benchutil.quick() else MODELS[key][2]


def _layers(layer):
    """Every leaf layer, nested models expanded."""
    import keras

    if isinstance(layer, keras.Model):
        for sub in layer.layers:
            yield from _layers(sub)
    else:
        yield layer


def conv_flops(model) -> int:
    """FLOPs per image of a model built with a static input size: 2 x MACs of Conv2D, Conv2DTranspose, Dense.

    Conv2D: H_out * W_out * kh * kw * C_in * C_out MACs; Conv2DTranspose: H_in * W_in * kh * kw * C_in * C_out
    (each input pixel scatters a kh x kw x C_out patch); Dense: C_in * C_out per position. A layer with a
    kernel of another kind raises, so nothing is silently left out.
    """
    import keras

    total = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, in_channels = layer.input.shape
            total += 2 * height * width * layer.kernel_size[0] * layer.kernel_size[1] * in_channels * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            in_channels = layer.input.shape[-1]
            total += 2 * height * width * layer.kernel_size[0] * layer.kernel_size[1] * in_channels * out_channels
        elif isinstance(layer, keras.layers.Dense):
            positions = 1
            for size in layer.input.shape[1:-1]:
                positions *= size
            total += 2 * positions * layer.input.shape[-1] * layer.units
        elif any(len(w.shape) > 1 for w in layer.weights):
            raise NotImplementedError(f"conv_flops: no FLOP rule for layer {layer.name!r} ({type(layer).__name__})")
    return total


def profiler_flops(model, size: int) -> int:
    """FLOPs per image that `tf.compat.v1.profiler` counts on the frozen inference graph at batch 1."""
    return benchutil.graph_flops(lambda x: model(x, training=False), size)


# --- Timing ---


def matmul_call():
    """A callable running one MATMUL_N^2 float32 matmul in a tf.function, and its FLOPs."""
    import tensorflow as tf

    a = tf.random.normal((MATMUL_N, MATMUL_N), seed=1)
    b = tf.random.normal((MATMUL_N, MATMUL_N), seed=2)
    matmul = tf.function(tf.linalg.matmul)
    return (lambda: matmul(a, b).numpy()), 2.0 * MATMUL_N**3


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_timing(fns: dict, matmul, budget_s: float, min_rounds: int, max_rounds: int) -> dict:
    """One untimed warm-up call of each function, then rounds in which each function's call is preceded by a
    matmul call, so that every function and its own matmul samples see the same stretch of load.

    The number of rounds is budget_s / (sum of the warm-up times), within [min_rounds, max_rounds].

    Returns:
        name -> dict: first_s (warm-up call, s), times / cpu_times (s per call), matmul_times /
        matmul_cpu_times (s per paired matmul call).
    """
    results = {name: {"first_s": _timed(fn)[0], "times": [], "cpu_times": [], "matmul_times": [],
                      "matmul_cpu_times": []} for name, fn in fns.items()}
    matmul()
    total_first = sum(r["first_s"] for r in results.values())
    rounds = 2 if benchutil.quick() else max(min_rounds, min(max_rounds, int(budget_s / max(total_first, 1e-3))))
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = _timed(matmul)
            results[name]["matmul_times"].append(wall)
            results[name]["matmul_cpu_times"].append(cpu)
            wall, cpu = _timed(fn)
            results[name]["times"].append(wall)
            results[name]["cpu_times"].append(cpu)
    return results


def paired_timing(fn, matmul, budget_s: float, min_calls: int, max_calls: int) -> dict:
    """`interleaved_timing` of one function."""
    return interleaved_timing({"fn": fn}, matmul, budget_s, min_calls, max_calls)["fn"]


def row(key, mode, batch, flops_per_image, timing, matmul_flops, note="") -> dict:
    """A result row. Three comparisons with the paired matmul calls: medians of wall time (the figure asked
    for), best calls (min time: the least disturbed), and medians of CPU time (work done, whatever share of
    the cores the process got)."""
    median, fastest = benchutil.median(timing["times"]), min(timing["times"])
    matmul_median, matmul_fastest = benchutil.median(timing["matmul_times"]), min(timing["matmul_times"])
    flops = flops_per_image * batch
    achieved, matmul_rate = flops / median / 1e9, matmul_flops / matmul_median / 1e9
    cpu_ratio = (flops / benchutil.median(timing["cpu_times"])) / (
        matmul_flops / benchutil.median(timing["matmul_cpu_times"]))
    return {
        "model": MODELS[key][0], "key": key, "mode": mode, "input": f"{input_size(key)}x{input_size(key)}",
        "batch": batch, "ms_per_img": median * 1e3 / batch, "min_ms_per_img": fastest * 1e3 / batch,
        "cpu_ms_per_img": benchutil.median(timing["cpu_times"]) * 1e3 / batch, "img_per_s": batch / median,
        "gflop_per_img": flops_per_image / 1e9, "achieved": achieved, "matmul": matmul_rate,
        "percent": 100.0 * achieved / matmul_rate,
        "percent_best": 100.0 * (flops / fastest) / (matmul_flops / matmul_fastest),
        "percent_cpu": 100.0 * cpu_ratio, "first_s": timing["first_s"], "calls": len(timing["times"]), "note": note,
    }


def random_images(batch: int, size: int, dtype="float32"):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (batch, size, size, 3)).astype(dtype)


def compile_for_training(model, jit_compile=False):
    import keras

    from tfvision.losses.segmentation import SegmentationLoss

    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=SegmentationLoss("cross_entropy"),
                  jit_compile=jit_compile)


def measure_model(key: str, matmul, matmul_flops) -> tuple[list[dict], dict]:
    """All rows of one model (see the module docstring), and its FLOP counts."""
    import keras
    import numpy as np

    from tfvision.export.saved_model import SegmentationServingModule
    from tfvision.models.xla_convolutions import plain_convolutions

    size = input_size(key)
    static = build(key, (size, size, 3))
    flops = conv_flops(static)
    info = {"model": MODELS[key][0], "params_m": static.count_params() / 1e6, "gflop_analytic": flops / 1e9,
            "gflop_profiler": profiler_flops(static, size) / 1e9}
    del static
    rows = []
    keras.utils.set_random_seed(0)
    model = build(key)
    model.compile(jit_compile=False)
    for batch, budget, min_calls, max_calls in ((1, 8.0, 5, 20), (8, 12.0, 3, 8)):
        images = random_images(batch, size)
        timing = paired_timing(lambda: model.predict_on_batch(images), matmul, budget, min_calls, max_calls)
        rows.append(row(key, "inference, predict_on_batch", batch, flops, timing, matmul_flops))
        print(f"  {key} b{batch}: {rows[-1]['ms_per_img']:.0f} ms/img", flush=True)

    images = random_images(1, size)
    model.compile(jit_compile=True)
    if model.jit_compile:
        timing = paired_timing(lambda: model.predict_on_batch(images), matmul, 8.0, 5, 20)
        rows.append(row(key, "inference, predict_on_batch, XLA", 1, flops, timing, matmul_flops))
        print(f"  {key} b1 XLA: {rows[-1]['ms_per_img']:.0f} ms/img", flush=True)
    else:
        rows.append({"model": MODELS[key][0], "key": key, "mode": "inference, predict_on_batch, XLA",
                     "input": f"{size}x{size}", "batch": 1,
                     "note": "n/a: Keras keeps jit_compile off (a layer has supports_jit=False: argmax pooling)"})

    serving = SegmentationServingModule(model, size)
    uint8_images = random_images(1, size, "uint8")
    with plain_convolutions():  # traced as `tfvision export` traces it
        serving.serving_default(uint8_images)
    timing = paired_timing(lambda: serving.serving_default(uint8_images)["segmentation_mask"].numpy(), matmul,
                           8.0, 5, 20)
    rows.append(row(key, "inference, export serving_default (uint8)", 1, flops, timing, matmul_flops))
    print(f"  {key} b1 serving: {rows[-1]['ms_per_img']:.0f} ms/img", flush=True)
    del serving

    batch = 2 if benchutil.quick() else MODELS[key][3]
    train_model = build(key)
    compile_for_training(train_model)
    images = random_images(batch, size)
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES + 1, (batch, size, size)).astype("int32")
    timing = paired_timing(lambda: train_model.train_on_batch(images, labels), matmul, 12.0, 3, 8)
    rows.append(row(key, "training step (train_on_batch, SGD)", batch, 3 * flops, timing, matmul_flops,
                    note="FLOPs = 3 x forward"))
    print(f"  {key} train b{batch}: {rows[-1]['ms_per_img']:.0f} ms/img", flush=True)
    return rows, info


def run(keys) -> dict:
    import tensorflow as tf

    matmul, matmul_flops = matmul_call()
    repeats = 2 if benchutil.quick() else 5
    result = {"load_start": benchutil.load_average(), "matmul4096_start": benchutil.matmul_gflops(4096, repeats),
              "rows": [], "flops": [], "threads": (tf.config.threading.get_intra_op_parallelism_threads(),
                                       tf.config.threading.get_inter_op_parallelism_threads())}
    start = time.perf_counter()
    for key in keys:
        print(f"{MODELS[key][0]} ...", flush=True)
        rows, info = measure_model(key, matmul, matmul_flops)
        result["rows"].extend(rows)
        result["flops"].append(info)
    result["matmul4096_end"] = benchutil.matmul_gflops(4096, repeats)
    result["load_end"] = benchutil.load_average()
    result["seconds"] = time.perf_counter() - start
    return result


# --- Levers ---


def fold_batch_norms(model):
    """Prototype: a copy of a functional model with every `X_bn` BatchNormalization folded into the `X_conv`
    convolution before it (kernel * gamma / sqrt(var + eps), bias beta - mean * that), for inference.

    Relies on tfvision's layer naming (`conv_bn_relu`, SegNet's decoder); here only to measure the lever.
    """
    import keras
    import numpy as np

    class PassThrough(keras.layers.Layer):
        def call(self, inputs, training=None, mask=None):
            return inputs

    norms = {layer.name.replace("_bn", "_conv"): layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)}

    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            return PassThrough(name=layer.name)
        config = layer.get_config()
        if layer.name in norms:
            config["use_bias"] = True
        return type(layer).from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in norms:
            norm = norms[layer.name]
            gamma, beta, mean, variance = (np.asarray(w) for w in (norm.gamma, norm.beta, norm.moving_mean,
                                                                     norm.moving_variance))
            scale = gamma / np.sqrt(variance + norm.epsilon)
            bias = np.asarray(layer.bias) if layer.use_bias else 0.0
            folded.get_layer(layer.name).set_weights([np.asarray(layer.kernel) * scale, (bias - mean) * scale + beta])
        elif layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            folded.get_layer(layer.name).set_weights(layer.get_weights())
    return folded


def _randomize_batch_norms(model) -> None:
    """Non-trivial BatchNorm statistics, so that checking a folded copy against the model compares something."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 2.0, n)])


def _check_same(key, lever, reference, candidate, size) -> None:
    import numpy as np
    import tensorflow as tf

    images = random_images(1, size)
    expected = np.asarray(tf.function(lambda x: reference(x, training=False))(images))
    actual = np.asarray(tf.function(lambda x: candidate(x, training=False))(images))
    # Other kernels round differently, through up to 27 layers (and SegNet's argmax pooling): 0.3% of the scale
    # (on an AVX2 CPU, where every convolution of the default model goes through XLA, SegNet's differed by more
    # than 0.1%).
    if not np.allclose(actual, expected, rtol=3e-3, atol=3e-3 * np.abs(expected).max()):
        raise AssertionError(f"{lever} changed {key}'s outputs by up to {np.abs(actual - expected).max()}")


def mask_unpooling(model):
    """Prototype: a copy of a SegNet whose argmax pooling / scatter unpooling pairs are replaced by a plain max
    pool and an unpooling that finds, in the tensor that was pooled, the first maximum (row-major) of each
    2x2 window - where `tf.nn.max_pool_with_argmax` puts its index - and puts the decoder value there.

    Same outputs for 2x2 stride-2 'valid' pooling (odd sizes too), no int64 index tensors, no scatter, and every
    op has an XLA kernel, so the whole model can be compiled. Here only to measure the lever.
    """
    import keras
    import tensorflow as tf

    from tfvision.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D

    class MaxPoolKeepValues(keras.layers.Layer):
        """(pooled, pooled): the second output takes the place of the indices."""

        def call(self, inputs):
            pooled = tf.nn.max_pool2d(inputs, 2, 2, "VALID")
            return pooled, pooled

        def compute_output_spec(self, inputs):
            shape = (inputs.shape[0], *(None if d is None else d // 2 for d in inputs.shape[1:3]), inputs.shape[3])
            spec = keras.KerasTensor(shape, dtype=self.compute_dtype)
            return spec, keras.KerasTensor(shape, dtype=self.compute_dtype)

    class UnpoolAtFirstMaximum(keras.layers.Layer):
        def call(self, inputs):
            values, pooled, like = inputs
            height, width = tf.shape(pooled)[1] * 2, tf.shape(pooled)[2] * 2
            windows = tf.split(tf.nn.space_to_depth(like[:, :height, :width, :], 2), 4, axis=-1)  # (dy, dx) order
            taken = tf.zeros_like(pooled, dtype=tf.bool)
            parts = []
            for window in windows:
                hit = tf.logical_and(tf.equal(window, pooled), tf.logical_not(taken))
                taken = tf.logical_or(taken, hit)
                parts.append(tf.where(hit, values, tf.zeros_like(values)))
            unpooled = tf.nn.depth_to_space(tf.concat(parts, axis=-1), 2)
            padding = [[0, 0], [0, tf.shape(like)[1] - height], [0, tf.shape(like)[2] - width], [0, 0]]
            return tf.pad(unpooled, padding)

        def compute_output_shape(self, input_shape):
            values, _, like = input_shape
            return (like[0], like[1], like[2], values[3])

    def clone(layer):
        if isinstance(layer, MaxPoolingWithArgmax2D):
            return MaxPoolKeepValues(name=layer.name)
        if isinstance(layer, MaxUnpooling2D):
            return UnpoolAtFirstMaximum(name=layer.name)
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        return type(layer).from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def lever_variants(key: str) -> tuple[dict, dict]:
    """The in-process levers of one model: name -> compiled Keras model (same weights), and name -> note for
    the levers that do not apply."""
    import keras

    from tfvision.models import use_xla_convolutions

    size = input_size(key)
    keras.utils.set_random_seed(0)
    base = build(key)
    _randomize_batch_norms(base)
    variants, notes = {"default": base}, {}

    def copy(policy="float32", xla_convolutions=True):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = build(key, xla_convolutions=xla_convolutions)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        model.set_weights(base.get_weights())
        return model

    variants["xla"] = copy()
    variants["plain_convolutions"] = copy(xla_convolutions=False)
    _check_same(key, "plain_convolutions", base, variants["plain_convolutions"], size)
    no_bfloat16 = benchutil.bfloat16_note()
    if no_bfloat16:
        notes["bf16"] = f"n/a: {no_bfloat16}"
    else:
        variants["bf16"] = copy("mixed_bfloat16")
    if any(isinstance(layer, keras.layers.BatchNormalization) for layer in _layers(base)):
        variants["bn_folded"] = fold_batch_norms(base)
        use_xla_convolutions(variants["bn_folded"])
        _check_same(key, "bn_folded", base, variants["bn_folded"], size)
    else:
        notes["bn_folded"] = "n/a: no BatchNormalization"
    if MODELS[key][1] == "segnet":
        for name in ("mask_unpool", "mask_unpool+xla"):
            variants[name] = mask_unpooling(base)
            use_xla_convolutions(variants[name])
        _check_same(key, "mask_unpool", base, variants["mask_unpool"], size)
    for name, model in variants.items():
        model.compile(jit_compile=name.endswith("xla"))
    if "mask_unpool+xla" in variants and not variants["mask_unpool+xla"].jit_compile:
        raise AssertionError("mask_unpooling left a layer that Keras will not compile with XLA")
    if not variants["xla"].jit_compile:
        notes["xla"] = "n/a: Keras keeps jit_compile off (a layer has supports_jit=False: argmax pooling)"
        del variants["xla"]
    return variants, notes


def lever_child(key: str, lever: str) -> dict:
    """A lever that needs its own process (environment, threading), on one model at batch 1."""
    import tensorflow as tf

    if lever == "inter_op_1":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    matmul, matmul_flops = matmul_call()
    size = input_size(key)
    flops = conv_flops(build(key, (size, size, 3)))
    model = build(key)
    model.compile()
    images = random_images(1, size)
    timing = paired_timing(lambda: model.predict_on_batch(images), matmul, 8.0, 4, 12)
    return row(key, lever, 1, flops, timing, matmul_flops, note="own process")


def run_levers(keys) -> list[dict]:
    """Per model: the in-process levers measured round-robin against each other, then each process-wide
    lever in a child process."""
    rows = []
    matmul, matmul_flops = matmul_call()
    for key in keys:
        size = input_size(key)
        flops = conv_flops(build(key, (size, size, 3)))
        variants, notes = lever_variants(key)
        images = random_images(1, size)
        timings = interleaved_timing(
            {name: (lambda model=model: model.predict_on_batch(images)) for name, model in variants.items()},
            matmul, 30.0, 4, 10)
        for lever in LEVERS:
            if lever in timings:
                rows.append(row(key, lever, 1, flops, timings[lever], matmul_flops, note="round-robin"))
            elif lever in notes:
                rows.append({"model": MODELS[key][0], "key": key, "mode": lever, "note": notes[lever]})
        del variants
        for lever in ("onednn_off", "inter_op_1"):
            env = dict(os.environ)
            if lever == "onednn_off":
                env["TF_ENABLE_ONEDNN_OPTS"] = "0"
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--lever-child", key, lever],
                                 capture_output=True, text=True, env=env, check=False)
            lines = [line for line in out.stdout.splitlines() if line.startswith("LEVER_RESULT ")]
            if out.returncode != 0 or not lines:
                raise RuntimeError(f"lever {lever} on {key} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len("LEVER_RESULT "):]))
        for r in rows:
            if r["key"] == key:
                shown = f"{r['ms_per_img']:.0f} ms/img" if "ms_per_img" in r else r["note"]
                print(f"  {key} {r['mode']}: {shown}", flush=True)
    return rows


# --- Report ---

PERCENT_NOTE = (
    f"matmul = median GFLOP/s of the {MATMUL_N}x{MATMUL_N} matmul calls paired with the row's calls. "
    "% of matmul: medians = achieved / matmul (wall-clock medians); best = fastest call against fastest matmul "
    "(the least disturbed calls); CPU = GFLOP per CPU-second of this process against the same for the matmul "
    "(work done, whatever share of the shared cores the process got)."
)
PERCENT_COLUMNS = (
    ("matmul GFLOP/s", "matmul", "{:.0f}"), ("% of matmul (medians)", "percent", "{:.0f}"),
    ("% (best)", "percent_best", "{:.0f}"), ("% (CPU)", "percent_cpu", "{:.0f}"),
)


def _header(info: dict) -> list[str]:
    import tensorflow as tf

    from tfvision.cpu_features import cpu_flags

    listed = cpu_flags()
    if listed is None:
        flags = "flags unknown"
    else:
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in listed) or "no AVX2"
    onednn = os.environ["TF_ENABLE_ONEDNN_OPTS"]  # importing tfvision sets it, unless the caller already had
    return [
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} CPUs ({flags}); Python {info['python']}, TensorFlow "
        f"{tf.__version__}, Keras {info.get('keras')}, NumPy {info.get('numpy')}; TF_ENABLE_ONEDNN_OPTS "
        f"{onednn}; default threading.",
    ]


def report(result: dict) -> str:
    info = benchutil.machine_info()
    rows = result["rows"]
    lines = [
        "## Segmentation models: speed (bench/segmentation.py)",
        "",
        *_header(info),
        f"fp32 matmul 4096x4096 (tf.function, median): {result['matmul4096_start']:.0f} GFLOP/s at the start, "
        f"{result['matmul4096_end']:.0f} at the end; load average {result['load_start']} at the start, "
        f"{result['load_end']} at the end (the 2 cores are shared; numbers drift with the load). "
        f"Run time {result['seconds'] / 60:.1f} min.",
        "",
        "Random weights, 21 output classes. Inference = `predict_on_batch` after `compile()` (Keras' compiled "
        "predict step; not XLA on a CPU-only machine) unless the mode says XLA (`compile(jit_compile=True)`) or "
        "export (`SegmentationServingModule.serving_default`, uint8 in, mask out). ms/img = median call time / "
        "batch. GFLOP/img = 2 x conv/dense MACs (training: 3 x forward). " + PERCENT_NOTE,
        "",
        benchutil.md_table(rows, [
            ("model", "model", ""), ("input", "input", ""), ("mode", "mode", ""), ("batch", "batch", ""),
            ("ms/img median", "ms_per_img", "{:.1f}"), ("ms/img min", "min_ms_per_img", "{:.1f}"),
            ("img/s", "img_per_s", "{:.2f}"), ("GFLOP/img", "gflop_per_img", "{:.1f}"),
            ("achieved GFLOP/s", "achieved", "{:.0f}"), *PERCENT_COLUMNS, ("first call s", "first_s", "{:.1f}"),
            ("calls", "calls", ""), ("note", "note", ""),
        ]),
        "",
        "FLOPs per image at batch 1 (forward): analytic count (used above) and `tf.compat.v1.profiler` on the "
        "frozen graph (also counts bias adds and other elementwise ops it has rules for).",
        "",
        benchutil.md_table(result["flops"], [
            ("model", "model", ""), ("params (M)", "params_m", "{:.1f}"),
            ("GFLOP analytic", "gflop_analytic", "{:.2f}"), ("GFLOP tf.profiler", "gflop_profiler", "{:.2f}"),
        ]),
        "",
    ]
    return "\n".join(lines)


def report_levers(rows: list[dict]) -> str:
    from tfvision.models.xla_convolutions import default_min_channel_product

    info = benchutil.machine_info()
    lines = [
        "## Segmentation models: speed levers at batch 1 (bench/segmentation.py --levers)",
        "",
        *_header(info),
        "`predict_on_batch` after `compile()`, the models of one network sharing weights and measured "
        "round-robin in one process (onednn_off and inter_op_1: each in its own process). Levers: default "
        "(graph mode; tfvision's default: `model.xla_convolutions` routes the convolutions with C_in * C_out >= "
        f"{default_min_channel_product():,} (on this CPU) through XLA, the rest stay on oneDNN), "
        "plain_convolutions (`model.xla_convolutions: false`: every convolution on oneDNN), xla "
        "(`compile(jit_compile=True)`), bf16 "
        "(`mixed_bfloat16` policy: bfloat16 compute, float32 variables and logits), bn_folded (prototype: "
        "BatchNorm folded into the conv before it), mask_unpool (SegNet; prototype: plain max pool, and "
        "unpooling to each window's first maximum found in the pooled tensor - same outputs, no indices, no "
        "scatter, XLA-compilable), mask_unpool+xla (the same with `jit_compile=True`), onednn_off "
        "(`TF_ENABLE_ONEDNN_OPTS=0`: Eigen kernels), "
        "inter_op_1 (`inter_op_parallelism_threads=1`). " + PERCENT_NOTE,
        "",
        benchutil.md_table(rows, [
            ("model", "model", ""), ("lever", "mode", ""), ("ms/img median", "ms_per_img", "{:.1f}"),
            ("ms/img min", "min_ms_per_img", "{:.1f}"), ("CPU ms/img", "cpu_ms_per_img", "{:.0f}"),
            ("achieved GFLOP/s", "achieved", "{:.0f}"), *PERCENT_COLUMNS, ("first call s", "first_s", "{:.1f}"),
            ("calls", "calls", ""), ("note", "note", ""),
        ]),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Markdown file to write the results section to")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}")
    parser.add_argument("--levers", action="store_true", help="measure the speed levers instead (see above)")
    parser.add_argument("--lever-child", nargs=2, metavar=("MODEL", "LEVER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lever_child:
        print("LEVER_RESULT " + json.dumps(lever_child(*args.lever_child)), flush=True)
        return 0
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    text = report_levers(run_levers(keys)) if args.levers else report(run(keys))
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
