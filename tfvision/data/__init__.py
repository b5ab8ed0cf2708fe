"""Data: the built-in shapes data set, COCO/VOC/TFDS loaders, transforms, targets."""
