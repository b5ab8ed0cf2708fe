"""Tests for tfvision.ops.roi (roi_pool, roi_align, assign_levels, multilevel_roi_align) and its layers.

The references below are slow plain-NumPy loops written line by line after torchvision's CPU kernels
(`roi_pool_kernel.cpp`, `roi_align_kernel.cpp`, `roi_align_common.h`), in float32 scalar arithmetic in the
kernels' order, translated to NHWC features and yxyx boxes. Boxes here are yxyx in image pixels.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_testing import assert_serialization_round_trip, dtype_policy

from tfvision.layers.roi import ROIAlign, ROIPooling
from tfvision.ops import roi

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max


# --- NumPy references (torchvision CPU kernels) ---


def c_round(value) -> int:
    """C's round(): halves away from zero (exact for float32 inputs in float64)."""
    v = float(value)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def ref_roi_pool(features, boxes, box_indices, out_h, out_w, scale):
    """roi_pool_forward_kernel_impl. Returns (output [R, oh, ow, C], argmax [R, oh, ow, C] flat y*W+x or -1)."""
    _, height, width, channels = features.shape
    output = np.zeros((len(boxes), out_h, out_w, channels), np.float32)
    argmax = np.full((len(boxes), out_h, out_w, channels), -1)
    for n in range(len(boxes)):
        image = features[box_indices[n]]
        ymin, xmin, ymax, xmax = (F32(v) for v in boxes[n])
        roi_start_w = c_round(xmin * F32(scale))
        roi_start_h = c_round(ymin * F32(scale))
        roi_end_w = c_round(xmax * F32(scale))
        roi_end_h = c_round(ymax * F32(scale))
        roi_width = max(roi_end_w - roi_start_w + 1, 1)
        roi_height = max(roi_end_h - roi_start_h + 1, 1)
        bin_size_h = F32(roi_height) / F32(out_h)
        bin_size_w = F32(roi_width) / F32(out_w)
        for ph in range(out_h):
            for pw in range(out_w):
                hstart = int(np.floor(F32(ph) * bin_size_h))
                wstart = int(np.floor(F32(pw) * bin_size_w))
                hend = int(np.ceil(F32(ph + 1) * bin_size_h))
                wend = int(np.ceil(F32(pw + 1) * bin_size_w))
                hstart = min(max(hstart + roi_start_h, 0), height)
                hend = min(max(hend + roi_start_h, 0), height)
                wstart = min(max(wstart + roi_start_w, 0), width)
                wend = min(max(wend + roi_start_w, 0), width)
                is_empty = hend <= hstart or wend <= wstart
                # All channels at once; per channel this is the kernel's strict '>' search from -FLT_MAX.
                maxval = np.full(channels, 0.0 if is_empty else -FLT_MAX, np.float32)
                maxidx = np.full(channels, -1)
                for h in range(hstart, hend):
                    for w in range(wstart, wend):
                        value = image[h, w]
                        greater = value > maxval
                        maxval = np.where(greater, value, maxval)
                        maxidx = np.where(greater, h * width + w, maxidx)
                output[n, ph, pw] = maxval
                argmax[n, ph, pw] = maxidx
    return output, argmax


def ref_roi_pool_grad(features, box_indices, argmax, upstream):
    """roi_pool_backward_kernel_impl: each output's gradient is added at its argmax."""
    grad = np.zeros(features.shape, np.float64)
    width = features.shape[2]
    for n, ph, pw, c in np.ndindex(*argmax.shape):
        index = argmax[n, ph, pw, c]
        if index != -1:
            grad[box_indices[n], index // width, index % width, c] += upstream[n, ph, pw, c]
    return grad


def ref_roi_align(features, boxes, box_indices, out_h, out_w, scale, sampling_ratio, aligned):
    """roi_align_forward_kernel_impl + pre_calc_for_bilinear_interpolate.

    Returns (output [R, oh, ow, C], taps): taps[(n, ph, pw)] lists (y, x, weight / count) for the gradient.
    """
    _, height, width, channels = features.shape
    output = np.zeros((len(boxes), out_h, out_w, channels), np.float32)
    taps = {}
    for n in range(len(boxes)):
        image = features[box_indices[n]]
        offset = F32(0.5) if aligned else F32(0.0)
        ymin, xmin, ymax, xmax = (F32(v) for v in boxes[n])
        roi_start_w = xmin * F32(scale) - offset
        roi_start_h = ymin * F32(scale) - offset
        roi_end_w = xmax * F32(scale) - offset
        roi_end_h = ymax * F32(scale) - offset
        roi_width = roi_end_w - roi_start_w
        roi_height = roi_end_h - roi_start_h
        if not aligned:
            roi_width = max(roi_width, F32(1.0))
            roi_height = max(roi_height, F32(1.0))
        bin_size_h = roi_height / F32(out_h)
        bin_size_w = roi_width / F32(out_w)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_height / F32(out_h)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_width / F32(out_w)))
        count = F32(max(grid_h * grid_w, 1))
        for ph in range(out_h):
            for pw in range(out_w):
                value = np.zeros(channels, np.float32)
                cell_taps = []
                for iy in range(grid_h):
                    yy = roi_start_h + F32(ph) * bin_size_h + F32(iy + 0.5) * bin_size_h / F32(grid_h)
                    for ix in range(grid_w):
                        xx = roi_start_w + F32(pw) * bin_size_w + F32(ix + 0.5) * bin_size_w / F32(grid_w)
                        y, x = yy, xx
                        if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
                            continue  # empty sample: all four weights are 0
                        if y <= 0:
                            y = F32(0.0)
                        if x <= 0:
                            x = F32(0.0)
                        y_low, x_low = int(y), int(x)
                        if y_low >= height - 1:
                            y_high = y_low = height - 1
                            y = F32(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_high = x_low = width - 1
                            x = F32(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = y - F32(y_low), x - F32(x_low)
                        hy, hx = F32(1.0) - ly, F32(1.0) - lx
                        w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
                        value += (
                            w1 * image[y_low, x_low]
                            + w2 * image[y_low, x_high]
                            + w3 * image[y_high, x_low]
                            + w4 * image[y_high, x_high]
                        )
                        for (py, px), w in zip(
                            [(y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)], [w1, w2, w3, w4]
                        ):
                            cell_taps.append((py, px, float(w) / float(count)))
                output[n, ph, pw] = value / count
                taps[(n, ph, pw)] = cell_taps
    return output, taps


def ref_roi_align_grad(features, box_indices, taps, upstream):
    """roi_align_backward_kernel_impl: upstream * w / count added at each of the four neighbours."""
    grad = np.zeros(features.shape, np.float64)
    for (n, ph, pw), cell_taps in taps.items():
        for y, x, w in cell_taps:
            grad[box_indices[n], y, x] += upstream[n, ph, pw] * w
    return grad


# --- Test data ---


def make_boxes(rng, height, width, scale, num_batch):
    """yxyx image-pixel boxes covering the cases the kernels branch on, and their image indices."""
    feature_boxes = [  # yxyx in feature-map pixels, mapped to image pixels below
        [1.3, 2.7, 9.6, 11.2],  # inside
        [0.0, 0.0, height - 1.0, width - 1.0],  # the whole map
        [-3.2, -4.5, 5.1, 6.0],  # partly outside, top-left
        [height - 4.0, width - 3.0, height + 5.0, width + 7.0],  # partly outside, bottom-right
        [-9.0, -9.0, -4.0, -2.0],  # entirely outside, above-left
        [height + 2.0, 1.0, height + 6.0, 5.0],  # entirely outside, below
        [4.2, 5.1, 4.6, 5.3],  # tiny (smaller than a bin)
        [6.0, 6.0, 6.0, 6.0],  # zero size
        [7.0, 9.0, 3.0, 2.0],  # malformed (max < min)
        [2.5, 3.5, 6.5, 9.5],  # corners on halves (rounding)
        [-0.5, -1.5, 4.5, 2.5],  # negative halves
        [-0.7, -0.2, 0.6, 0.9],  # samples between -1 and 0
    ]
    for _ in range(8):  # random, some reaching past the map
        y0, x0 = rng.uniform(-3, height), rng.uniform(-3, width)
        feature_boxes.append([y0, x0, y0 + rng.uniform(0.2, height), x0 + rng.uniform(0.2, width)])
    boxes = (np.asarray(feature_boxes, np.float64) / scale).astype(np.float32)
    indices = rng.integers(0, num_batch, len(boxes)).astype(np.int32)
    return boxes, indices


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_features(rng, shape=(3, 12, 16, 3)):
    return rng.normal(size=shape).astype(np.float32)


def eager_and_graph(op, features, boxes, indices, *args):
    """`op` run eagerly and inside a tf.function with unknown sizes (graph rewrites must not change results).

    autograph=False as Keras traces layer calls; that graph gets Grappler's x / const -> x * (1 / const).
    """
    graph_op = tf.function(
        lambda f, b, i: op(f, b, i, *args),
        autograph=False,
        input_signature=[
            tf.TensorSpec([None, None, None, features.shape[-1]]),
            tf.TensorSpec([None, 4]),
            tf.TensorSpec([None], tf.int32),
        ],
    )
    return op(features, boxes, indices, *args).numpy(), graph_op(features, boxes, indices).numpy()


# --- roi_pool ---


def test_roi_pool_hand_worked_4x4():
    features = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    pooled = roi.roi_pool(features, [[0.0, 0.0, 3.0, 3.0]], [0], 2)  # yxyx: the whole 4x4 map
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[5, 7], [13, 15]])
    # A box in the right half only (x 2..3): each 2x1 row bin takes the larger column.
    pooled = roi.roi_pool(features, [[0.0, 2.0, 3.0, 3.0]], [0], (2, 1))
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[7], [15]])


def test_roi_pool_empty_bins_are_zero():
    features = np.full((1, 4, 4, 1), -7.0, np.float32)
    # yxyx box rows 2..5 on a 4-row map: the lower bin lies below the map.
    pooled = roi.roi_pool(features, [[2.0, 0.0, 5.0, 3.0]], [0], (2, 1)).numpy()[0, :, 0, 0]
    np.testing.assert_array_equal(pooled, [-7.0, 0.0])
    outside = roi.roi_pool(features, [[10.0, 10.0, 12.0, 12.0]], [0], 2).numpy()
    np.testing.assert_array_equal(outside, np.zeros((1, 2, 2, 1)))


def test_roi_pool_never_picks_nan_or_minus_inf():
    # The kernel starts each bin at -FLT_MAX and takes only strictly greater values.
    features = np.array([[np.nan, 1.0], [-np.inf, 0.5]], np.float32).reshape(1, 2, 2, 1)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled = roi.roi_pool(x, [[0.0, 0.0, 1.0, 1.0]], [0], 2)
        loss = tf.reduce_sum(tf.where(pooled > -1e30, pooled, 0.0))
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[-FLT_MAX, 1.0], [-FLT_MAX, 0.5]])
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy()[0, :, :, 0], [[0.0, 1.0], [0.0, 1.0]])
    whole = roi.roi_pool(features, [[0.0, 0.0, 1.0, 1.0]], [0], 1).numpy()
    assert whole[0, 0, 0, 0] == 1.0


def test_roi_pool_rounds_halves_away_from_zero():
    features = 15.0 - np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # row 0: 15, 14, 13, 12
    # x 0.5 -> 1 (banker's rounding would give 0), so the 1x1 pool covers columns 1..2 of row 0: max 14.
    pooled = roi.roi_pool(features, [[0.0, 0.5, 0.0, 2.4]], [0], 1).numpy()
    assert pooled[0, 0, 0, 0] == 14.0
    # x -0.5 -> -1 and 1.5 -> 2: columns -1..2, clipped to 0..2 -> 15.
    pooled = roi.roi_pool(features, [[0.0, -0.5, 0.0, 1.5]], [0], 1).numpy()
    assert pooled[0, 0, 0, 0] == 15.0


@pytest.mark.parametrize(
    "scale, output_size", [(1.0, (7, 7)), (0.25, (3, 5)), (1 / 16, (2, 1)), (1.0, (5, 3))]
)
def test_roi_pool_matches_reference(rng, scale, output_size):
    features = random_features(rng)
    boxes, indices = make_boxes(rng, 12, 16, scale, num_batch=3)
    expected, _ = ref_roi_pool(features, boxes, indices, *output_size, scale)
    eager, graph = eager_and_graph(roi.roi_pool, features, boxes, indices, output_size, scale)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(graph, expected)


def test_graph_mode_keeps_divisions_exact(rng):
    # Inside tf.function Grappler would turn x / 3 into x * (1 / 3): 7 / 3 becomes 2.3333335, the last bin of a
    # 7-row roi pooled to 3 would end at ceil(7.0000005) = 8 and take row 7 (outside the box) too.
    features = np.zeros((1, 12, 4, 1), np.float32)
    features[0, 7] = 100.0
    eager, graph = eager_and_graph(roi.roi_pool, features, np.array([[0, 0, 6, 3]], np.float32), [0], (3, 1), 1.0)
    np.testing.assert_array_equal(eager[0, :, 0, 0], [0, 0, 0])
    np.testing.assert_array_equal(graph[0, :, 0, 0], [0, 0, 0])
    # 105 / 7 = 15 exactly, but 105 * (1 / 7) = 15.000001: the adaptive grid would become 16 samples.
    features = rng.normal(size=(1, 112, 112, 2)).astype(np.float32)
    boxes, indices = np.array([[0, 0, 105, 105]], np.float32), np.array([0], np.int32)
    expected, _ = ref_roi_align(features, boxes, indices, 7, 7, 1.0, 0, False)
    eager, graph = eager_and_graph(roi.roi_align, features, boxes, indices, 7, 1.0, 0, False)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph, expected, rtol=1e-5, atol=1e-5)


def test_roi_pool_gradient_lands_on_first_max(rng):
    # Few distinct values, so bins have tied maxima: the gradient must go to the first (row-major) one only.
    features = rng.integers(0, 3, size=(2, 10, 12, 3)).astype(np.float32)
    boxes, indices = make_boxes(rng, 10, 12, 1.0, num_batch=2)
    expected, argmax = ref_roi_pool(features, boxes, indices, 3, 4, 1.0)
    upstream = rng.normal(size=expected.shape).astype(np.float32)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        pooled = roi.roi_pool(x, boxes, indices, (3, 4))
        loss = tf.reduce_sum(pooled * upstream)
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_array_equal(pooled.numpy(), expected)
    np.testing.assert_allclose(grad, ref_roi_pool_grad(features, indices, argmax, upstream), atol=1e-5)


def test_roi_pool_gradient_in_tf_function_with_unknown_shapes(rng):
    # The forward pass keeps only the maxima; the gradient recomputes the first-maximum positions (a custom
    # gradient): it must give torchvision's argmax gradient inside a graph too, ties and NaNs included.
    features = rng.integers(0, 3, size=(2, 10, 12, 3)).astype(np.float32)
    features[0, 2, 3, 1] = np.nan
    features[1, 4, 5, 0] = -np.inf
    boxes, indices = make_boxes(rng, 10, 12, 0.5, num_batch=2)
    expected, argmax = ref_roi_pool(features, boxes, indices, 3, 2, 0.5)
    upstream = rng.normal(size=expected.shape).astype(np.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3]),
            tf.TensorSpec([None, 4]),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def fn(f, b, i):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = roi.roi_pool(f, b, i, (3, 2), 0.5)
            loss = tf.reduce_sum(out * upstream)
        return out, tape.gradient(loss, f)

    out, grad = fn(features, boxes, indices)
    np.testing.assert_array_equal(out.numpy(), expected)
    np.testing.assert_allclose(grad.numpy(), ref_roi_pool_grad(features, indices, argmax, upstream), atol=1e-5)


# --- roi_align ---


def test_roi_align_hand_worked_ramp():
    # f(y, x) = 4y + x is linear, so each bilinear sample is exact and a bin is 4 * mean(y) + mean(x).
    features = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    # aligned: box 0..4 -> -0.5..3.5, bins of 2, samples at -0.5 + {0.5, 1.5} = {0, 1} and {2, 3}.
    pooled = roi.roi_align(features, [[0.0, 0.0, 4.0, 4.0]], [0], 2, sampling_ratio=2, aligned=True)
    np.testing.assert_allclose(pooled.numpy()[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]], rtol=1e-6)
    # aligned=True, one sample at the centre of (0.5..1.5) - 0.5 = (0, 0.5): halfway between f(0, 0) ... f(1, 1).
    pooled = roi.roi_align(features, [[0.5, 0.5, 1.5, 1.5]], [0], 1, sampling_ratio=1, aligned=True)
    assert pooled.numpy()[0, 0, 0, 0] == pytest.approx(2.5)
    # not aligned: box 0..2, one sample at (1, 1) -> f = 5.
    pooled = roi.roi_align(features, [[0.0, 0.0, 2.0, 2.0]], [0], 1, sampling_ratio=1, aligned=False)
    assert pooled.numpy()[0, 0, 0, 0] == pytest.approx(5.0)


def test_roi_align_boundary_rules():
    features = np.full((1, 4, 4, 1), 7.0, np.float32)
    # Sample at (-0.5, -0.5): in [-1, 0], so read at (0, 0) with full weight -> 7 (not 7/4).
    near = roi.roi_align(features, [[-1.0, -1.0, 0.0, 0.0]], [0], 1, sampling_ratio=1, aligned=False)
    assert near.numpy()[0, 0, 0, 0] == pytest.approx(7.0)
    # Sample at (-2.5, -2.5): below -1, contributes 0.
    far = roi.roi_align(features, [[-3.0, -3.0, -2.0, -2.0]], [0], 1, sampling_ratio=1, aligned=False)
    assert far.numpy()[0, 0, 0, 0] == 0.0
    # Sample at (4, 4) == (H, W): still inside, clamped to the last pixel -> 7.
    edge = roi.roi_align(features, [[3.5, 3.5, 4.5, 4.5]], [0], 1, sampling_ratio=1, aligned=False)
    assert edge.numpy()[0, 0, 0, 0] == pytest.approx(7.0)
    # x samples at 3.75 and 4.25 (> W = 4): two of the four samples count, so the average halves.
    half = roi.roi_align(features, [[1.0, 3.5, 2.0, 4.5]], [0], 1, sampling_ratio=2, aligned=False)
    assert half.numpy()[0, 0, 0, 0] == pytest.approx(7.0 * 2 / 4)


@pytest.mark.parametrize(
    "aligned, sampling_ratio, scale, output_size",
    [
        (True, 2, 1.0, (7, 7)),
        (False, 2, 1.0, (3, 5)),
        (True, 0, 1.0, (3, 5)),
        (False, 0, 1.0, (7, 7)),
        (True, 2, 0.25, (3, 5)),
        (False, 0, 0.25, (2, 1)),
        (True, 0, 1 / 16, (7, 7)),
        (False, 2, 1 / 16, (5, 3)),
        (True, 1, 0.25, (4, 4)),
        (False, 3, 1.0, (2, 3)),
    ],
)
def test_roi_align_matches_reference(rng, aligned, sampling_ratio, scale, output_size):
    features = random_features(rng)
    boxes, indices = make_boxes(rng, 12, 16, scale, num_batch=3)
    expected, _ = ref_roi_align(features, boxes, indices, *output_size, scale, sampling_ratio, aligned)
    eager, graph = eager_and_graph(roi.roi_align, features, boxes, indices, output_size, scale, sampling_ratio, aligned)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [2, 3])
def test_roi_align_small_bins_sharing_neighbours(rng, sampling_ratio):
    # Bins of 0.3-2.3 pixels (the torchvision benchmark's boxes): the samples of a bin share neighbouring
    # pixels, which roi_align merges into one matrix entry each and drops at zero weight. Values and
    # gradients must still be the kernel's.
    features = random_features(rng, (2, 20, 20, 4))
    corner = rng.uniform(-1.0, 14.0, (40, 2))
    side = rng.uniform(2.0, 16.0, (40, 2))
    boxes = np.concatenate([corner, corner + side], axis=1).astype(np.float32)
    boxes[:4, 2:] = boxes[:4, :2] + np.float32(0.5)  # smaller than a pixel: every sample in one cell
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    expected, taps = ref_roi_align(features, boxes, indices, 7, 7, 1.0, sampling_ratio, True)
    eager, graph = eager_and_graph(roi.roi_align, features, boxes, indices, 7, 1.0, sampling_ratio, True)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph, expected, rtol=1e-5, atol=1e-5)
    upstream = rng.normal(size=expected.shape).astype(np.float32)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(roi.roi_align(x, boxes, indices, 7, 1.0, sampling_ratio, True) * upstream)
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(grad, ref_roi_align_grad(features, indices, taps, upstream), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned, sampling_ratio", [(True, 2), (False, 0)])
def test_roi_align_gradient_is_bilinear_scatter(rng, aligned, sampling_ratio):
    features = random_features(rng, (2, 10, 12, 3))
    boxes, indices = make_boxes(rng, 10, 12, 0.5, num_batch=2)
    expected, taps = ref_roi_align(features, boxes, indices, 3, 4, 0.5, sampling_ratio, aligned)
    upstream = rng.normal(size=expected.shape).astype(np.float32)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(roi.roi_align(x, boxes, indices, (3, 4), 0.5, sampling_ratio, aligned) * upstream)
    grad = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(grad, ref_roi_align_grad(features, indices, taps, upstream), rtol=1e-5, atol=1e-5)


def test_roi_align_unknown_shapes_in_tf_function_with_gradient(rng):
    features = random_features(rng)
    boxes, indices = make_boxes(rng, 12, 16, 0.25, num_batch=3)
    upstream = rng.normal(size=(len(boxes), 2, 3, 3)).astype(np.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3]),
            tf.TensorSpec([None, 4]),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def fn(f, b, i):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = roi.roi_align(f, b, i, (2, 3), 0.25, sampling_ratio=0)
            loss = tf.reduce_sum(out * upstream)
        return out, tape.gradient(loss, f)

    out, grad = fn(features, boxes, indices)
    expected, taps = ref_roi_align(features, boxes, indices, 2, 3, 0.25, 0, True)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad.numpy(), ref_roi_align_grad(features, indices, taps, upstream), atol=1e-5)


@pytest.mark.parametrize("op", [roi.roi_pool, roi.roi_align])
def test_no_boxes_gives_empty_output_and_zero_gradient(op):
    x = tf.constant(np.ones((2, 6, 6, 4), np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = op(x, tf.zeros([0, 4]), tf.zeros([0], tf.int32), (3, 2))
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 3, 2, 4)
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), np.zeros((2, 6, 6, 4)))


@pytest.mark.parametrize("op", [roi.roi_pool, roi.roi_align])
@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_output_dtype_follows_features(rng, op, dtype):
    features = random_features(rng)
    boxes, indices = make_boxes(rng, 12, 16, 1.0, num_batch=3)
    expected = op(features, boxes, indices, 3).numpy()
    actual = op(features.astype(dtype), boxes, indices, 3)
    assert actual.dtype == dtype
    np.testing.assert_allclose(actual.numpy().astype(np.float32), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("op", [roi.roi_pool, roi.roi_align])
def test_bad_inputs_raise_clear_errors(op):
    features = np.zeros((1, 8, 8, 2), np.float32)
    boxes = np.array([[0.0, 0.0, 4.0, 4.0]], np.float32)
    with pytest.raises(ValueError, match="features must have rank 4"):
        op(features[0], boxes, [0], 2)
    with pytest.raises(ValueError, match=r"boxes must have shape \[R, 4\]"):
        op(features, np.zeros((1, 5), np.float32), [0], 2)
    with pytest.raises(ValueError, match=r"boxes must have shape \[R, 4\]"):
        op(features, np.zeros((1, 1, 4), np.float32), [0], 2)
    for size in (0, -1, (2, 0), (2, 2, 2), 2.5):
        with pytest.raises(ValueError, match="output_size"):
            op(features, boxes, [0], size)
    with pytest.raises(ValueError, match="box_indices"):
        op(features, np.zeros((2, 4), np.float32), [0], 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="box_indices must be < the batch size"):
        op(features, boxes, [1], 2)
    with pytest.raises(ValueError, match="spatial_scale"):
        op(features, boxes, [0], 2, spatial_scale=0.0)


# --- assign_levels and multilevel_roi_align ---


def square(size):
    return [10.0, 20.0, 10.0 + size, 20.0 + size]


def test_assign_levels_hand_picked():
    boxes = [square(224), square(112), square(448), square(56), square(28), square(1000), square(0),
             [0.0, 0.0, 112.0, 448.0], square(223.0), [5.0, 5.0, 1.0, 1.0],
             [0.0, 0.0, 223.99993, 223.99993]]  # fmt: skip
    levels = roi.assign_levels(boxes, min_level=2, max_level=5).numpy()
    # The last box: 4 + log2(223.99993 / 224) = 3.9999995 in float32; LevelMapper's +1e-6 lifts it to level 4.
    np.testing.assert_array_equal(levels, [4, 3, 5, 2, 2, 5, 2, 4, 3, 2, 4])
    assert levels.dtype == np.int32
    # Another canonical scale: 800 px boxes at level 5.
    np.testing.assert_array_equal(roi.assign_levels([square(800), square(400)], 3, 7, 800, 5).numpy(), [5, 4])


def test_assign_levels_matches_level_mapper_formula(rng):
    sizes = rng.uniform(1, 900, size=(200, 2)).astype(np.float32)
    boxes = np.concatenate([np.zeros_like(sizes), sizes], axis=1)  # yxyx from the origin
    area = sizes[:, 0] * sizes[:, 1]
    expected = np.floor(F32(4) + np.log2(np.sqrt(area) / F32(224)) + F32(1e-6))
    expected = np.clip(expected, 2, 5).astype(np.int32)
    np.testing.assert_array_equal(roi.assign_levels(boxes, 2, 5).numpy(), expected)


def make_pyramid(rng, image_size=128, strides=(4, 8, 16), batch=2, channels=3):
    return [
        rng.normal(size=(batch, image_size // s, image_size // s, channels)).astype(np.float32) for s in strides
    ]


def test_multilevel_roi_align_keeps_box_order(rng):
    strides = [4, 8, 16]
    pyramid = make_pyramid(rng)
    # sqrt(area) 20, 150, 81, 300, 134, 240 -> levels 2, 3, 2, 4, 3, 4 (224 at level 4, clamped to 2..4).
    boxes = np.array([square(20), square(150), [8, 8, 100, 80], square(300), [0, 0, 60, 300], square(240)], np.float32)
    indices = np.array([0, 1, 1, 0, 0, 1], np.int32)
    levels = roi.assign_levels(boxes, 2, 4).numpy()
    np.testing.assert_array_equal(levels, [2, 3, 2, 4, 3, 4])
    result = roi.multilevel_roi_align(pyramid, boxes, indices, (3, 4), strides, sampling_ratio=2, aligned=True)
    for r in range(len(boxes)):
        level = levels[r] - 2
        expected, _ = ref_roi_align(pyramid[level], boxes[r : r + 1], indices[r : r + 1], 3, 4,
                                    1 / strides[level], 2, True)  # fmt: skip
        np.testing.assert_allclose(result.numpy()[r], expected[0], rtol=1e-5, atol=1e-5)


def test_multilevel_roi_align_dict_input_and_all_levels_used(rng):
    pyramid = make_pyramid(rng, image_size=512, strides=(4, 8, 16, 32))
    features = {"p2": pyramid[0], "p3": pyramid[1], "p4": pyramid[2], "p5": pyramid[3]}
    strides = {"p5": 32, "p4": 16, "p3": 8, "p2": 4}
    boxes = np.array([square(460), square(30), square(230), square(120), square(60)], np.float32)
    indices = np.array([1, 0, 1, 0, 1], np.int32)
    result = roi.multilevel_roi_align(features, boxes, indices, 2, strides, sampling_ratio=0, aligned=False)
    in_graph = tf.function(
        lambda b, i: roi.multilevel_roi_align(features, b, i, 2, strides, sampling_ratio=0, aligned=False),
        input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)],
        autograph=False,
    )
    np.testing.assert_allclose(in_graph(boxes, indices).numpy(), result.numpy(), rtol=1e-6, atol=1e-6)
    levels = roi.assign_levels(boxes, 2, 5).numpy()
    np.testing.assert_array_equal(levels, [5, 2, 4, 3, 2])
    for r, level in enumerate(levels):
        expected = roi.roi_align(pyramid[level - 2], boxes[r : r + 1], indices[r : r + 1], 2,
                                 1 / 2**level, 0, False)  # fmt: skip
        np.testing.assert_allclose(result.numpy()[r], expected.numpy()[0], rtol=1e-6, atol=1e-6)


def test_multilevel_roi_align_rejects_bad_strides(rng):
    pyramid = make_pyramid(rng)
    boxes, indices = np.array([square(50)], np.float32), np.array([0], np.int32)
    with pytest.raises(ValueError, match="one stride per feature map"):
        roi.multilevel_roi_align(pyramid, boxes, indices, 2, [4, 8])
    with pytest.raises(ValueError, match="powers of two"):
        roi.multilevel_roi_align(pyramid, boxes, indices, 2, [4, 8, 12])
    with pytest.raises(ValueError, match="consecutive"):
        roi.multilevel_roi_align(pyramid, boxes, indices, 2, [4, 16, 32])


# --- Layers ---


def layer_inputs(rng):
    features = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    boxes = np.array([[0, 0, 32, 32], [8, 4, 60, 40], [-8, 10, 20, 70], [30, 30, 31, 31], [5, 5, 50, 50]], np.float32)
    indices = np.array([0, 1, 1, 0, 1], np.int32)
    return [features, boxes, indices]


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (ROIPooling, {"output_size": (3, 2), "spatial_scale": 0.25}),
        (ROIAlign, {"output_size": 4, "spatial_scale": 0.25, "sampling_ratio": 0, "aligned": False}),
    ],
)
def test_layers_round_trip(rng, tmp_path, layer_cls, kwargs):
    inputs = layer_inputs(rng)
    loaded = assert_serialization_round_trip(layer_cls, kwargs, inputs, tmp_path=tmp_path)
    # The reloaded layer computes what the op computes.
    if layer_cls is ROIAlign:
        expected = roi.roi_align(*inputs, kwargs["output_size"], 0.25, 0, False)
    else:
        expected = roi.roi_pool(*inputs, kwargs["output_size"], 0.25)
    np.testing.assert_allclose(loaded(inputs).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    size = kwargs["output_size"]
    expected_size = (size, size) if isinstance(size, int) else tuple(size)
    assert tuple(layer_cls(**kwargs).get_config()["output_size"]) == expected_size


@pytest.mark.parametrize("layer_cls, output_size", [(ROIPooling, 3), (ROIAlign, (2, 3))])
def test_layers_output_shape_unknown_sizes(rng, layer_cls, output_size):
    layer = layer_cls(output_size, spatial_scale=0.25)
    features = keras.Input((None, None, 3))
    boxes = keras.Input((4,))
    indices = keras.Input((), dtype="int32")
    out = layer([features, boxes, indices])
    assert tuple(out.shape) == (None, *layer.output_size, 3)
    model = keras.Model([features, boxes, indices], out)
    result = model(layer_inputs(rng))
    assert tuple(result.shape) == (5, *layer.output_size, 3)


@pytest.mark.parametrize("layer_cls", [ROIPooling, ROIAlign])
def test_layers_under_mixed_float16(rng, layer_cls):
    inputs = layer_inputs(rng)
    expected = layer_cls(3, spatial_scale=0.25)(inputs).numpy()
    with dtype_policy("mixed_float16"):
        layer = layer_cls(3, spatial_scale=0.25)
        features = keras.Input((16, 16, 3))
        boxes = keras.Input((4,))
        indices = keras.Input((), dtype="int32")
        half_features = keras.layers.Activation("linear")(features)  # float16 under the policy
        model = keras.Model([features, boxes, indices], layer([half_features, boxes, indices]))
        result = model(inputs)
    assert layer.compute_dtype == "float16"
    assert result.dtype == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(result).astype(np.float32), expected, rtol=3e-3, atol=3e-3)


def test_layers_reject_bad_calls_and_arguments(rng):
    features, boxes, indices = layer_inputs(rng)
    with pytest.raises(ValueError, match=r"list \[features, boxes, box_indices\]"):
        ROIAlign(2)([features, boxes])
    with pytest.raises(ValueError, match="features must have rank 4"):
        ROIAlign(2)([features[0], boxes, indices])
    with pytest.raises(ValueError, match=r"boxes must have shape \[R, 4\]"):
        ROIPooling(2)([features, boxes[:, :3], indices])
    with pytest.raises(ValueError, match="output_size"):
        ROIPooling(0)
    with pytest.raises(ValueError, match="spatial_scale"):
        ROIAlign(2, spatial_scale=-1.0)
    with pytest.raises(ValueError, match="sampling_ratio"):
        ROIAlign(2, sampling_ratio=1.5)


@pytest.mark.parametrize("layer_cls", [ROIPooling, ROIAlign])
def test_layers_pass_gradients_to_earlier_layers(rng, layer_cls):
    features, boxes, indices = layer_inputs(rng)
    conv = keras.layers.Conv2D(4, 3, padding="same")
    pool = layer_cls((2, 2), spatial_scale=0.25)

    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(pool([conv(x), boxes, indices])))
        return tape.gradient(loss, conv.trainable_variables)

    grads = step(tf.constant(features))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.abs(grads[0].numpy()).sum() > 0


def test_ops_export_to_saved_model_with_gradients(rng, tmp_path):
    # Serving exports must load with plain TensorFlow; the custom gradient must not capture forward tensors.
    features, boxes, indices = layer_inputs(rng)
    signature = [tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)]

    class Pooler(tf.Module):
        @tf.function(input_signature=signature)
        def pool(self, f, b, i):
            return roi.roi_align(f, b, i, (2, 3), 0.25, 0, True), roi.roi_pool(f, b, i, 2, 0.25)

    tf.saved_model.save(Pooler(), str(tmp_path / "pooler"))
    loaded = tf.saved_model.load(str(tmp_path / "pooler"))
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        aligned, pooled = loaded.pool(x, boxes, indices)
        loss = tf.reduce_sum(aligned * aligned) + tf.reduce_sum(pooled)
    with tf.GradientTape() as direct_tape:
        direct_tape.watch(x)
        direct = roi.roi_align(x, boxes, indices, (2, 3), 0.25, 0, True), roi.roi_pool(x, boxes, indices, 2, 0.25)
        direct_loss = tf.reduce_sum(direct[0] * direct[0]) + tf.reduce_sum(direct[1])
    np.testing.assert_allclose(aligned.numpy(), direct[0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pooled.numpy(), direct[1].numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), direct_tape.gradient(direct_loss, x).numpy(), atol=1e-5)
