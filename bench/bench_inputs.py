"""The seeded inputs both sides of a comparison use (numpy only, so the torch environment can import it).

Boxes are xyxy float32, as torchvision takes them; the tfvision benches reorder them to yxyx.
"""

from __future__ import annotations

import numpy as np

NMS_IMAGE = 1024.0  # NMS boxes live in a 1024 x 1024 image
ROI_FEATURE_SIZE = 64  # ROI boxes live on a 64 x 64 feature map (spatial scale 1)


def nms_inputs(n, num_classes=80, seed=0):
    """n boxes (corner uniform in [0, 896], sides uniform in [16, 128]), uniform scores, uniform class ids."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, NMS_IMAGE - 128, (n, 2))
    wh = rng.uniform(16, 128, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, num_classes, n)
    return boxes, scores, classes


def roi_boxes(k, seed=1, feature_size=ROI_FEATURE_SIZE):
    """k boxes on a feature map: corner uniform in [0, size - 16], sides uniform in [2, 16]."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, feature_size - 16, (k, 2))
    wh = rng.uniform(2, 16, (k, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def roi_features(channels=256, size=ROI_FEATURE_SIZE, seed=0):
    """A standard-normal feature map, NHWC `[1, size, size, channels]`."""
    return np.random.default_rng(seed).standard_normal((1, size, size, channels)).astype(np.float32)


def xyxy_to_yxyx(boxes):
    return np.ascontiguousarray(boxes[:, [1, 0, 3, 2]])
