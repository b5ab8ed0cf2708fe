"""Semantic segmentation builders: FCN (and the dense-to-conv conversion), SegNet-style encoder-decoders,
U-Net. Each takes a `tfvision.config.ModelConfig` and returns a functional model: float32 images
`[B, H, W, 3]` in 0..255 -> float32 logits `[B, H, W, num_classes + 1]`."""

from tfvision.models.segmentation.fcn import build_fcn, convert_dense_to_conv
from tfvision.models.segmentation.segnet import build_segnet
from tfvision.models.segmentation.unet import build_unet
