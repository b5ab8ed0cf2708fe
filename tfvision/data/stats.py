"""Counts that describe a COCO-format annotation file: objects per class and the spread of box sizes."""

from __future__ import annotations

import collections
import json
import math

# COCO's area ranges for APs / APm / APl, in square pixels.
COCO_SIZE_RANGES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, math.inf))
# Box side (square root of the box area) histogram edges, in pixels.
SIDE_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, math.inf)


def annotation_stats(annotation_file: str) -> dict:
    """Summarises one COCO instances file.

    Returns:
        {"images", "objects", "crowd", "images_without_objects", "per_class": {name: count},
         "coco_sizes": {"small"|"medium"|"large": count}, "side_histogram": [(lo, hi, count), ...]}
        where sizes are counted on the bbox area (w * h) of non-crowd objects.
    """
    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {annotation_file} does not exist.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{annotation_file} is not valid JSON ({e}); re-export the annotations.") from None
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    per_class = collections.Counter({name: 0 for name in names.values()})
    sizes = collections.Counter({name: 0 for name, _, _ in COCO_SIZE_RANGES})
    sides = [0] * (len(SIDE_EDGES) - 1)
    with_objects = set()
    crowd = 0
    annotations = data.get("annotations", [])
    for ann in annotations:
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        with_objects.add(ann["image_id"])
        per_class[names.get(ann["category_id"], f"unknown id {ann['category_id']}")] += 1
        w, h = ann["bbox"][2], ann["bbox"][3]
        area = max(w, 0) * max(h, 0)
        for name, lo, hi in COCO_SIZE_RANGES:
            if lo <= area < hi:
                sizes[name] += 1
        side = math.sqrt(area)
        for k in range(len(sides)):
            if SIDE_EDGES[k] <= side < SIDE_EDGES[k + 1]:
                sides[k] += 1
    images = data.get("images", [])
    return {
        "images": len(images),
        "objects": len(annotations) - crowd,
        "crowd": crowd,
        "images_without_objects": len({im["id"] for im in images} - with_objects),
        "per_class": dict(per_class),
        "coco_sizes": dict(sizes),
        "side_histogram": [(SIDE_EDGES[k], SIDE_EDGES[k + 1], n) for k, n in enumerate(sides)],
    }


def format_stats(stats: dict, title: str = "") -> str:
    """A plain-text report of `annotation_stats` output."""
    lines = [title] if title else []
    lines.append(
        f"images {stats['images']}, objects {stats['objects']} (+{stats['crowd']} crowd), "
        f"images without objects {stats['images_without_objects']}"
    )
    lines.append("objects per class:")
    width = max((len(n) for n in stats["per_class"]), default=5)
    for name, count in stats["per_class"].items():
        lines.append(f"  {name:<{width}}  {count:>8}")
    lines.append("COCO size ranges (bbox area): " + ", ".join(f"{k} {v}" for k, v in stats["coco_sizes"].items()))
    lines.append("box side sqrt(w*h) in pixels:")
    total = max(1, stats["objects"])
    for lo, hi, count in stats["side_histogram"]:
        label = f"[{lo}, {hi})" if hi != math.inf else f"[{lo}, inf)"
        bar = "#" * round(40 * count / total)
        lines.append(f"  {label:>12} {count:>8} {bar}")
    return "\n".join(lines)
