"""Images/s of tfvision's training input pipeline against a bare tf.data baseline, in the same run.

Two workloads:
  * shapes: the built-in data set's 128-px PNGs, trained at 128;
  * jpeg640: 640x480 JPEGs (the shapes images enlarged, boxes scaled), resized to 512 — the cost profile of
    COCO/VOC photos.

tfvision's pipeline: `load_coco_folder` (decode + padded targets) -> `build_input_pipeline(training=True)`
(its default augmentation: flip, scale jitter with crop; static padded batches). The baseline: file paths ->
read -> decode -> resize -> random flip -> batch, nothing else. Both use AUTOTUNE parallel maps and
prefetch and the same batch size.

What is timed: the steady state, as in training. Timed passes of the data set's size alternate between the
two pipelines, so that both run under the same load of a shared machine; each pass reads a new iterator over
`repeat()` and starts its clock after 8 untimed batches. Making an iterator costs a fixed start-up (tf.data
optimizes every map function again: tens of milliseconds for tfvision's, which has more nodes); `model.fit`
pays it once per epoch, i.e. once per thousands of images, so it is reported beside the throughput, not
inside it.
The target is at least 0.8x the baseline's images/s.

Usage: python bench/data_pipeline.py [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfvision  # noqa: E402,F401  (before TensorFlow: its settings, as `tfvision` users get them)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import benchutil  # noqa: E402
from tfvision.data import coco, pipeline, synthetic  # noqa: E402

BATCH = 16
MAX_INSTANCES = 32
# Timed rounds per workload. Single rounds on a shared 2-core VM range over +-0.1 in ratio; the median of 15
# moves far less than the median of 5 did, for a few seconds more per workload.
ROUNDS = 15


def make_jpeg_folder(shapes_root: str, out_root: str, height: int = 480, width: int = 640) -> None:
    """A COCO-format folder of 640x480 JPEGs made by enlarging the shapes training images."""
    with open(os.path.join(shapes_root, "annotations", "instances_train.json")) as f:
        data = json.load(f)
    os.makedirs(os.path.join(out_root, "images", "train"))
    os.makedirs(os.path.join(out_root, "annotations"))
    for image in data["images"]:
        pixels = cv2.imread(os.path.join(shapes_root, "images", "train", image["file_name"]))
        sy, sx = height / image["height"], width / image["width"]
        image["file_name"] = image["file_name"].replace(".png", ".jpg")
        image["height"], image["width"] = height, width
        big = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(os.path.join(out_root, "images", "train", image["file_name"]), big,
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        image["_scale"] = (sx, sy)
    scales = {im["id"]: im.pop("_scale") for im in data["images"]}
    for ann in data["annotations"]:
        sx, sy = scales[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        ann.pop("segmentation", None)  # masks are not used by the detection pipeline measured here
    with open(os.path.join(out_root, "annotations", "instances_train.json"), "w") as f:
        json.dump(data, f)


def baseline(root: str, size: int) -> tf.data.Dataset:
    """Bare tf.data: read, decode, resize, random flip, batch."""
    folder = os.path.join(root, "images", "train")
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size))
        return tf.image.random_flip_left_right(image)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def full(root: str, size: int) -> tf.data.Dataset:
    """tfvision's detection training pipeline (boxes and classes carried; no instance masks)."""
    dataset, _ = coco.load_coco_folder(root, "train", max_instances=MAX_INSTANCES, semantic_dir=None)
    return pipeline.build_input_pipeline(
        dataset, size, BATCH, training=True, shuffle_buffer=0, seed=0,
        keys=("images", "boxes", "classes", "is_crowd", "image_id", "original_size"),
    )


def timed_batches(iterator, batches: int) -> tuple[int, float, float]:
    """Reads `batches` batches: (images, wall seconds, CPU seconds of this process)."""
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(iterator)
        images = batch["images"] if isinstance(batch, dict) else batch
        count += int(images.shape[0])
    return count, time.perf_counter() - start, time.process_time() - cpu


def start_up_ms(dataset: tf.data.Dataset, repeats: int = 3) -> float:
    """Median wall ms from making an iterator to holding its first batch."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        next(iter(dataset))
        times.append(time.perf_counter() - start)
    return 1e3 * benchutil.median(times)


def steady_pass(dataset: tf.data.Dataset, batches: int, warm_up: int = 8) -> tuple[int, float, float]:
    """One timed pass of `batches` batches from a new iterator, after `warm_up` untimed batches (its start-up,
    the filling of its buffers and the autotuning of its parallelism). The iterator is gone before the next
    pass: a second live iterator would keep working in the background, on the time of the one being timed."""
    iterator = iter(dataset.repeat())
    timed_batches(iterator, warm_up)
    result = timed_batches(iterator, batches)
    del iterator
    return result


def compare(base: tf.data.Dataset, ours: tf.data.Dataset, num_images: int, repeats: int = ROUNDS) -> dict:
    """Steady-state images/s of the two pipelines, in alternating timed passes of `num_images` each.

    Other jobs share the machine and their load drifts over a run; alternating the passes lets each round
    compare the two under about the same load, and the median of the per-round ratios is the ratio reported,
    with their interquartile range.
    CPU time per image (all threads of this process) is reported too: it is much less sensitive to the load.
    """
    if benchutil.quick():
        repeats = 2
    batches = num_images // BATCH
    steady_pass(base, batches), steady_pass(ours, batches)  # warm-up of each: Python-side tracing, caches
    rounds = []
    for r in range(repeats):
        order = (base, ours) if r % 2 == 0 else (ours, base)
        result = {d: steady_pass(d, batches) for d in order}
        rounds.append((result[base], result[ours]))
    n = rounds[0][0][0]
    base_rate = [n / b[1] for b, _ in rounds]
    ours_rate = [n / o[1] for _, o in rounds]
    ratios = sorted(o / b for o, b in zip(ours_rate, base_rate))
    quarter = len(ratios) // 4
    base_cpu = benchutil.median([b[2] for b, _ in rounds]) / n
    ours_cpu = benchutil.median([o[2] for _, o in rounds]) / n
    return {
        "images": n,
        "baseline": benchutil.median(base_rate),
        "tfvision": benchutil.median(ours_rate),
        "ratio": benchutil.median(ratios),
        "ratio_iqr": f"{ratios[quarter]:.2f}-{ratios[-1 - quarter]:.2f}",
        "baseline_cpu": 1e6 * base_cpu,
        "tfvision_cpu": 1e6 * ours_cpu,
        "cpu_ratio": base_cpu / ours_cpu,
        "baseline_start": start_up_ms(base),
        "tfvision_start": start_up_ms(ours),
    }


def run(num_images: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shapes = synthetic.make_shapes(os.path.join(tmp, "shapes"), num_images, 1, 128, seed=0, progress=False)
        jpegs = os.path.join(tmp, "jpeg640")
        make_jpeg_folder(shapes, jpegs)
        for name, root, size in (("shapes 128-px PNG -> 128", shapes, 128), ("640x480 JPEG -> 512", jpegs, 512)):
            row = {"workload": name, **compare(baseline(root, size), full(root, size), num_images)}
            rows.append(row)
            print(f"{name}: baseline {row['baseline']:.0f} img/s, tfvision {row['tfvision']:.0f} img/s, ratio "
                  f"{row['ratio']:.2f}; CPU {row['baseline_cpu']:.0f} vs {row['tfvision_cpu']:.0f} us/img, ratio "
                  f"{row['cpu_ratio']:.2f}; iterator start-up {row['baseline_start']:.0f} vs "
                  f"{row['tfvision_start']:.0f} ms")
    return rows


def report(rows: list[dict]) -> str:
    info = benchutil.machine_info()
    lines = [
        "## Input pipeline (bench/data_pipeline.py)",
        "",
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} CPUs; Python {info['python']}, TensorFlow "
        f"{info.get('tensorflow')}, Keras {info.get('keras')}, NumPy {info.get('numpy')}.",
        f"Batch {BATCH}, AUTOTUNE parallelism; steady state: {ROUNDS} rounds of one pass of each pipeline, "
        "alternating, each pass timed on a new iterator after 8 untimed batches; img/s are medians, ratio is the "
        "median of the per-round ratios (tfvision / baseline), beside their interquartile range; CPU ratio "
        "compares CPU time per image (baseline / tfvision). "
        "Start-up: wall ms from making an iterator to its first batch, paid once per epoch (median of 3). tfvision = "
        "`load_coco_folder` + `build_input_pipeline(training=True)` (default augmentation: flip, scale jitter + "
        f"crop; boxes/classes padded to {MAX_INSTANCES}); baseline = read + decode + resize + flip + batch. "
        "Target: ratio >= 0.8.",
        "",
        benchutil.md_table(rows, [
            ("workload", "workload", ""), ("images", "images", ""),
            ("baseline img/s", "baseline", "{:.0f}"), ("tfvision img/s", "tfvision", "{:.0f}"),
            ("ratio", "ratio", "{:.2f}"), ("ratio IQR", "ratio_iqr", ""),
            ("baseline CPU us/img", "baseline_cpu", "{:.0f}"),
            ("tfvision CPU us/img", "tfvision_cpu", "{:.0f}"), ("CPU ratio", "cpu_ratio", "{:.2f}"),
            ("baseline start-up ms", "baseline_start", "{:.0f}"),
            ("tfvision start-up ms", "tfvision_start", "{:.0f}"),
        ]),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Markdown file to write the results section to")
    parser.add_argument("--images", type=int, default=16 if benchutil.quick() else 512)
    args = parser.parse_args(argv)
    text = report(run(args.images))
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
