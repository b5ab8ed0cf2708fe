"""tfvision: image segmentation and object detection for TensorFlow / Keras 3."""

import os

# TensorFlow leaves its oneDNN CPU kernels off on some x86 CPUs (an AVX2-only AMD EPYC among them), where they
# train 1.6x faster than its default kernels (a YOLOv1 step at batch 32: 345 against 560 ms) and run dilated
# transposed convolutions, which the default kernels cannot. TensorFlow reads this when it is first
# imported, so it holds wherever tfvision is imported before TensorFlow (the `tfvision` command); a setting of
# the user's own wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
