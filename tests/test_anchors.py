"""Tests for tfvision.ops.anchors: literal anchors, counts, and the order a detection head emits."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from tfvision.ops import anchors as A

R2 = math.sqrt(2.0)


# --- grid anchors: literal values ---


def test_64px_image_stride_32_one_size_literal():
    out = A.multilevel_anchors((64, 64), strides=(32,), sizes=(32,), aspect_ratios=(1.0,))
    assert out.dtype == tf.float32
    # yxyx; centres at (16, 16), (16, 48), (48, 16), (48, 48); row-major.
    np.testing.assert_allclose(out.numpy(), [[0, 0, 32, 32], [0, 32, 32, 64], [32, 0, 64, 32], [32, 32, 64, 64]])


def test_offset_zero_literal():
    # Centres on the grid corners (0, 0), (0, 32), (32, 0), (32, 32), side 64.
    out = A.multilevel_anchors((64, 64), strides=(32,), sizes=(64,), aspect_ratios=(1.0,), offset=0.0)
    np.testing.assert_allclose(
        out.numpy(), [[-32, -32, 32, 32], [-32, 0, 32, 64], [0, -32, 64, 32], [0, 0, 64, 64]]
    )


def test_one_location_scales_and_ratios_literal():
    # One location, centre (16, 16); size 16; ratio = width / height; scale-major, ratio-minor.
    out = A.level_anchors((32, 32), stride=32, size=16, aspect_ratios=(0.5, 1.0, 2.0), scales=(1.0, 2.0))
    h, w = 16 * R2 / 2, 16 / R2 / 2  # half height / half width of the 16-px ratio-0.5 box (tall)
    expected = [
        [16 - h, 16 - w, 16 + h, 16 + w],  # scale 1, ratio 0.5: 22.6 high, 11.3 wide
        [8, 8, 24, 24],  # scale 1, ratio 1
        [16 - w, 16 - h, 16 + w, 16 + h],  # scale 1, ratio 2: wide
        [16 - 2 * h, 16 - 2 * w, 16 + 2 * h, 16 + 2 * w],  # scale 2, ratio 0.5
        [0, 0, 32, 32],  # scale 2, ratio 1
        [16 - 2 * w, 16 - 2 * h, 16 + 2 * w, 16 + 2 * h],  # scale 2, ratio 2
    ]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert A.anchors_per_location((0.5, 1.0, 2.0), (1.0, 2.0)) == 6


def test_counts_for_sizes_not_divisible_by_the_stride():
    # 65 x 100 at stride 32: ceil(65/32) = 3 rows, ceil(100/32) = 4 columns; at stride 64: 2 x 2.
    out = A.multilevel_anchors((65, 100), strides=(32, 64), sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0))
    assert out.shape == ((3 * 4 + 2 * 2) * 3, 4)
    assert A.feature_map_size((65, 100), 32) == (3, 4)


def test_mismatched_levels_and_bad_values_raise():
    with pytest.raises(ValueError, match="2 strides but 1 sizes"):
        A.multilevel_anchors((64, 64), strides=(16, 32), sizes=(32,))
    with pytest.raises(ValueError, match="must be positive"):
        A.level_anchors((64, 64), stride=16, size=32, aspect_ratios=(0.0, 1.0))


# --- grid anchors: the order a head emits ---


def fake_head_output(image_size, strides, sizes, ratios, scales, offset):
    """What a head emitting [1, H, W, A*4] per level gives after reshape to [1, H*W*A, 4] and concat,
    when the 4 numbers it writes for (row i, column j, anchor a) are that anchor, computed here by hand."""
    outputs = []
    for stride, size in zip(strides, sizes):
        grid_h, grid_w = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
        shapes = list(itertools.product(scales, ratios))  # scale-major, ratio-minor
        head = np.zeros((1, grid_h, grid_w, len(shapes) * 4), np.float32)
        for i in range(grid_h):
            for j in range(grid_w):
                cy, cx = (i + offset) * stride, (j + offset) * stride
                for a, (scale, ratio) in enumerate(shapes):
                    h, w = scale * size / math.sqrt(ratio), scale * size * math.sqrt(ratio)
                    head[0, i, j, 4 * a : 4 * a + 4] = [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]
        outputs.append(tf.reshape(head, [1, grid_h * grid_w * len(shapes), 4]))
    return tf.concat(outputs, axis=1)[0]


def test_order_matches_a_head_reshaped_and_concatenated_over_levels():
    image_size, strides, sizes = (96, 64), (8, 16, 32), (16, 32, 64)  # not square: rows != columns
    ratios, scales = (0.5, 1.0, 2.0), (1.0, 1.5)
    anchors = A.multilevel_anchors(image_size, strides, sizes, ratios, scales, offset=0.5)
    expected = fake_head_output(image_size, strides, sizes, ratios, scales, offset=0.5)
    np.testing.assert_allclose(anchors.numpy(), expected.numpy(), rtol=1e-6, atol=1e-4)
    # And a real stride-s 'same' head on that image has exactly as many outputs per level.
    image = tf.zeros([1, *image_size, 3])
    total = 0
    for stride in strides:
        features = tf.nn.avg_pool2d(image, stride, stride, "SAME")
        head = tf.keras.layers.Conv2D(A.anchors_per_location(ratios, scales) * 4, 3, padding="same")(features)
        total += tf.reshape(head, [1, -1, 4]).shape[1]
    assert total == anchors.shape[0]


def test_dynamic_image_size_in_tf_function():
    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def make(image_size):
        return A.multilevel_anchors(image_size, strides=(16, 32), sizes=(32, 64), aspect_ratios=(0.5, 2.0))

    for size in [(64, 96), (33, 17)]:
        expected = A.multilevel_anchors(size, strides=(16, 32), sizes=(32, 64), aspect_ratios=(0.5, 2.0))
        np.testing.assert_allclose(make(tf.constant(size)).numpy(), expected.numpy())


# --- SSD default boxes ---


def np_ssd_boxes(image_size, feature_map_sizes, sizes, aspect_ratios, steps, clip):
    """SSD default boxes written out by hand: layer, row, column, then [s, s', (r, 1/r) per ratio]."""
    out = []
    for k, f in enumerate(feature_map_sizes):
        step = steps[k] if steps else image_size[0] / f
        s, s_prime = sizes[k], math.sqrt(sizes[k] * sizes[k + 1])
        shapes = [(s, s), (s_prime, s_prime)]  # (height, width)
        for r in aspect_ratios[k]:
            shapes += [(s / math.sqrt(r), s * math.sqrt(r)), (s * math.sqrt(r), s / math.sqrt(r))]
        for i in range(f):
            for j in range(f):
                cy, cx = (i + 0.5) * step, (j + 0.5) * step
                for h, w in shapes:
                    out.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    out = np.array(out)
    return np.clip(out, 0, image_size[0]) if clip else out


def test_ssd300_has_8732_boxes_in_head_order():
    spec = A.SSD300_VGG16
    assert spec.boxes_per_location == (4, 6, 6, 6, 4, 4)
    boxes = spec.default_boxes()
    assert boxes.shape == (8732, 4)
    expected = np_ssd_boxes(
        spec.image_size, spec.feature_map_sizes, spec.sizes, spec.aspect_ratios, spec.steps, clip=True
    )
    np.testing.assert_allclose(boxes.numpy(), expected, rtol=1e-5, atol=1e-3)


def test_ssd300_literal_boxes():
    boxes = A.SSD300_VGG16.default_boxes().numpy()
    s1 = math.sqrt(21 * 45) / 2  # half side of the extra square, 15.37
    hw, hh = 21 * R2 / 2, 21 / R2 / 2  # half width / half height of the ratio-2 box
    # First location of conv4_3 (38 x 38, step 8): centre (4, 4), corners clipped at 0.
    np.testing.assert_allclose(
        boxes[:4],
        [[0, 0, 14.5, 14.5], [0, 0, 4 + s1, 4 + s1], [0, 0, 4 + hh, 4 + hw], [0, 0, 4 + hw, 4 + hh]],
        rtol=1e-5,
    )
    # Last box of conv4_3: centre (300, 300), ratio 1/2 (tall), clipped at 300.
    np.testing.assert_allclose(boxes[38 * 38 * 4 - 1], [300 - hw, 300 - hh, 300, 300], rtol=1e-5)
    # Last box overall: 1 x 1 map, centre (150, 150), size 261, ratio 1/2: 369 high (clipped), 184.6 wide.
    np.testing.assert_allclose(boxes[-1], [0, 150 - 261 / R2 / 2, 300, 150 + 261 / R2 / 2], rtol=1e-5)
    unclipped = dataclasses.replace(A.SSD300_VGG16, clip=False).default_boxes().numpy()
    np.testing.assert_allclose(unclipped[0], [4 - 10.5, 4 - 10.5, 4 + 10.5, 4 + 10.5])
    assert unclipped.min() < 0 and boxes.min() == 0 and boxes.max() == 300


def test_ssdlite320_spreads_centres_evenly_without_steps():
    spec = A.SSDLITE320_MOBILENET_V3
    assert spec.boxes_per_location == (6,) * 6
    boxes = spec.default_boxes().numpy()
    assert boxes.shape == (6 * (20 * 20 + 10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1), 4)  # 3234
    expected = np_ssd_boxes(spec.image_size, spec.feature_map_sizes, spec.sizes, spec.aspect_ratios, None, True)
    np.testing.assert_allclose(boxes, expected, rtol=1e-5, atol=1e-3)
    # First box of the 3 x 3 layer: step 320/3, centre (53.33, 53.33), side 208 -> clipped at 0.
    first = 6 * (400 + 100 + 25)
    np.testing.assert_allclose(boxes[first], [0, 0, 160 / 3 + 104, 160 / 3 + 104], rtol=1e-5)


def test_ssd_sizes_follow_the_paper_rule():
    # s_k = 0.2 + 0.14 (k - 1) for k = 1..7, times 300.
    np.testing.assert_allclose(A.ssd_sizes(300, 0.2, 0.9, 6), [60, 102, 144, 186, 228, 270, 312])


def test_ssd_argument_mismatch_raises():
    with pytest.raises(ValueError, match="need 3 sizes"):
        A.ssd_default_boxes((300, 300), (19, 10), sizes=(60, 100), aspect_ratios=((2,), (2,)))
    with pytest.raises(ValueError, match="aspect-ratio lists"):
        A.ssd_default_boxes((300, 300), (19, 10), sizes=(60, 100, 150), aspect_ratios=((2,),))
