"""Losses: per-pixel segmentation cross entropy and Dice (detection losses live beside them)."""

from tfvision.losses.segmentation import SegmentationLoss, build_segmentation_loss, dice_loss, softmax_cross_entropy
