"""tfvision: image segmentation and object detection for TensorFlow / Keras 3."""

__version__ = "0.1.0"
