"""Evaluation: COCO AP (pycocotools), VOC AP, segmentation mIoU."""
