"""Feature extractors with multi-level outputs ("level1".."level5" at strides 2..32): keras.applications
VGG16, ResNet50, MobileNetV2 and a tiny VGG-style net. See `tfvision.backbones.backbones`."""

from tfvision.backbones.backbones import (
    BACKBONES,
    NUM_LEVELS,
    POOLING_BACKBONES,
    ImageNormalization,
    build_backbone,
    check_input_shape,
    encoder_stages,
)
