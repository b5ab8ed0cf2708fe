"""Faster CPU inference: the convolutions of a model that oneDNN runs slowly go through XLA instead.

TensorFlow's CPU convolution (oneDNN, NHWC) uses Keras' HWIO kernels in their plain layout.
  - With AVX-512 (a 2-core Xeon), that costs it about half the machine's matmul rate on convolutions with many
    input and output channels, while XLA's convolution runs them near it; on wide maps with few channels oneDNN
    is the faster one. Per call (float32, batch 1, CPU milliseconds, oneDNN vs XLA): 3x3 512 -> 512 on
    64 x 64, 244 vs 110; on 32 x 32, 57 vs 32; on 16 x 16, 19 vs 10; 3x3 256 -> 256 on 128 x 128, 136 vs 111;
    3x3 64 -> 64 on 256 x 256, 26 vs 37. VGG16 FCN-8s and SegNet at 512 px need about 25% less CPU time with
    the convolutions of C_in * C_out >= 65,536 (`WIDE_CHANNELS`) through XLA.
  - Without AVX-512 (a 2-core AMD EPYC with AVX2), oneDNN is slower than XLA on nearly every 3x3 convolution,
    by up to 5x (wall milliseconds, oneDNN vs XLA): 64 -> 64 on 512 x 512, 313 vs 140; 128 -> 128 on
    256 x 256, 715 vs 131; 512 -> 512 on 32 x 32, 44 vs 36; 16 -> 16 on 256 x 256, 6.4 vs 4.6; only the
    first layer, 3 -> 64 on 512 x 512, was faster on oneDNN (16 vs 26). With every spatial convolution
    through XLA, FCN-8s at 512 px took 1.2 s per image instead of 2.4, U-Net (base 64, 256 px) 0.76 s
    instead of 1.6, SSD300-VGG16 0.56 s instead of 0.71.

`use_xla_convolutions(model)` makes every `keras.layers.Conv2D` of `model` with a kernel larger than 1 x 1 and
C_in * C_out >= `min_channel_product` run its convolution as an XLA cluster, decided when a graph is traced
(`default_min_channel_product()`: `WIDE_CHANNELS` with AVX-512, 1 - every one - without):

  - only for inference (Keras' `training` not True): XLA's convolution gradients are slower here than
    oneDNN's, so training graphs keep the plain convolution;
  - only in float32 (bfloat16 convolutions run on oneDNN's AMX kernels, far faster than XLA's);
  - never inside `plain_convolutions()`: SavedModel export traces under it, because TF Serving runs XLA
    clusters only when started with `--xla_cpu_compilation_enabled`.

The weights, the outputs (within float rounding) and the saved `.keras` file do not change. `build_model`
applies it when `model.xla_convolutions` is true (the default).
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf
from keras.src.backend.common import global_state

from tfvision.cpu_features import CPUINFO, has_avx512

# C_in * C_out from which a convolution runs through XLA on CPUs with AVX-512 (256 -> 256 is the smallest
# measured to gain there).
WIDE_CHANNELS = 256 * 256

_state = threading.local()


@contextlib.contextmanager
def plain_convolutions():
    """Within this block, graphs traced use the plain (oneDNN) convolution everywhere, e.g. for export."""
    previous = getattr(_state, "plain", False)
    _state.plain = True
    try:
        yield
    finally:
        _state.plain = previous


def default_min_channel_product(cpuinfo=CPUINFO) -> int:
    """`WIDE_CHANNELS` on CPUs with AVX-512 (and where the CPU's features cannot be read), 1 on others: there
    oneDNN's convolutions are the slow ones (see the module docstring)."""
    return 1 if has_avx512(cpuinfo) is False else WIDE_CHANNELS


def use_xla_convolutions(model: keras.Model, min_channel_product: int | None = None) -> int:
    """Routes the convolutions of `model` that oneDNN runs slowly (in place, nested models included) through XLA
    for inference.

    Args:
        model: a built Keras model.
        min_channel_product: C_in * C_out from which a convolution goes through XLA; None for this CPU's
            `default_min_channel_product()`.

    Returns:
        The number of Conv2D layers that will use XLA when traced for float32 inference.
    """
    if min_channel_product is None:
        min_channel_product = default_min_channel_product()
    changed = 0
    for layer in _all_layers(model):
        if not isinstance(layer, keras.layers.Conv2D) or getattr(layer, "_tfvision_plain_op", None) is not None:
            continue
        if tuple(layer.kernel_size) == (1, 1) or layer.groups != 1 or not layer.built:
            continue
        in_channels, out_channels = layer.kernel.shape[-2], layer.kernel.shape[-1]
        if in_channels * out_channels < min_channel_product:
            continue
        layer._tfvision_plain_op = layer.convolution_op
        layer.convolution_op = _dispatcher(layer, layer.convolution_op)
        changed += 1
    return changed


def _dispatcher(layer, plain_op):
    compiled = tf.function(plain_op, jit_compile=True, autograph=False)

    def convolution_op(inputs, kernel):
        # Keras' `training` flag of the enclosing model call (None outside one, as for inference).
        context = global_state.get_global_attribute("current_call_ctx")
        training = context.get_value("training") if context is not None else None
        if getattr(_state, "plain", False) or training or layer.compute_dtype != "float32":
            return plain_op(inputs, kernel)
        return compiled(inputs, kernel.value if hasattr(kernel, "value") else kernel)

    return convolution_op


def _all_layers(layer):
    """`layer` and every layer inside it, depth first (nested models and their layers)."""
    yield layer
    children = layer.layers if isinstance(layer, keras.Model) else getattr(layer, "_layers", None) or []
    for child in children:
        yield from _all_layers(child)
