"""Training: tf.distribute strategies from config, learning-rate schedules, and the Trainer around model.fit."""

from tfvision.training.schedules import build_schedule
from tfvision.training.strategy import configure_cpu_devices, create_strategy
from tfvision.training.trainer import FreezeBackbone, Trainer, build_optimizer, segmentation_pairs
