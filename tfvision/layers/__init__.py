"""Keras layers that wrap tfvision ops: each registered, serializable, and usable under mixed precision."""

from tfvision.layers.tied_conv import TiedConv2DTranspose
from tfvision.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D
from tfvision.layers.roi import ROIAlign, ROIPooling
from tfvision.layers.anchor_generator import AnchorGenerator
from tfvision.layers.detection_decoder import DetectionDecoder
