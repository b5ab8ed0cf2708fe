"""Speed of tfvision's single-stage detectors and of NMS alone, on CPU.

NMS alone: `bench_inputs.nms_inputs(N)`, N random boxes in a 1024x1024 image (corner uniform in [0, 896],
width and height uniform in [16, 128]), uniform scores, class ids uniform in 0..79, IoU 0.5, no score
threshold, every survivor kept. Rows:
  * `ops.nms.batched_nms` (exact greedy, class-aware), called eagerly as a user would;
  * `ops.nms.padded_batched_nms` with per-class scores `[1, N, 80]` in a `tf.function` (what `DetectionDecoder`
    runs inside `model.predict` and exports: every (box, class) pair above the threshold is a candidate; here
    one non-zero score per box, the same work);
  * `tf.image.combined_non_max_suppression` on the same boxes, TensorFlow's own batched NMS, for reference;
  beside `torchvision.ops.batched_nms` on the same boxes, measured in the same run (bench/torch_reference.py).

Detectors (random weights, 80 classes as COCO, `DetectionDecoder` defaults: score threshold 0.05, NMS 0.5,
100 detections; the SSD rows use torchvision's test settings instead): `model.detect` (network + decode +
NMS, the graph `model.predict` and an export run) inside a `tf.function`, batch 1 and 8, images per second.
SSD300-VGG16, SSDLite320 on MobileNetV3-Large (torchvision's `ssdlite320_mobilenet_v3_large`, full tail) and
on MobileNetV2, and the YOLO conv head (v3 style) at 416 on MobileNetV2. Random weights give near-uniform
scores, so every anchor and class passes the threshold and NMS works on its largest input (top 1,000
pre-NMS candidates): the slow case. torchvision's `ssd300_vgg16` and `ssdlite320_mobilenet_v3_large` (batch
1) are measured in the same run, before tfvision's rows.

Timing: default TF threading, one untimed warm-up call, medians of timed calls; the 2 cores are shared.

Usage: python bench/detection.py [--out FILE] [--skip-models]
BENCH_QUICK=1: a smoke run (tiny counts; numbers meaningless).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfvision  # noqa: E402,F401  (before TensorFlow: its settings, as `tfvision` users get them)

import bench_inputs  # noqa: E402
import benchutil  # noqa: E402

NUM_CLASSES = 80
IMAGE = 1024.0
# label -> (model.name, backbone, input size, family options)
# The SSD rows use torchvision's test settings (score threshold, detections kept).
DETECTORS = {
    "SSD300-VGG16": ("ssd", "vgg16", 300, {"detection": {"score_threshold": 0.01, "max_detections": 200}}),
    "SSDLite320-MobileNetV3-Large": ("ssd", "mobilenetv3large", 320, {"ssd": {"head": "separable"},
                                                                      "detection": {"score_threshold": 0.001,
                                                                                    "max_detections": 300}}),
    "SSDLite320-MobileNetV2": ("ssd", "mobilenetv2", 320, {"ssd": {"head": "separable"},
                                                           "detection": {"score_threshold": 0.001,
                                                                         "max_detections": 300}}),
    "YOLO conv head (v3), MobileNetV2": ("yolo", "mobilenetv2", 416, {"yolo": {"version": "v3"}}),
}
# Our row -> the torchvision model of the same architecture (bench/torch_reference.py "ssd" names).
TORCHVISION_SAME = {"SSD300-VGG16": "ssd300_vgg16",
                    "SSDLite320-MobileNetV3-Large": "ssdlite320_mobilenet_v3_large full tail"}
TARGET_SPEEDUP = 1.2


def nms_inputs(n, num_classes=NUM_CLASSES, seed=0):
    """`bench_inputs.nms_inputs` (the boxes torchvision gets) as yxyx float32 boxes, scores, int32 class ids."""
    boxes, scores, classes = bench_inputs.nms_inputs(n, num_classes, seed)
    return bench_inputs.xyxy_to_yxyx(boxes), scores, classes.astype("int32")


def bench_nms(torch_ms: dict) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from tfvision.ops import nms

    rows = []
    for n in (200, 400) if benchutil.quick() else (1000, 10000):
        boxes, scores, classes = nms_inputs(n)
        per_class = np.zeros((1, n, NUM_CLASSES), np.float32)
        per_class[0, np.arange(n), classes] = np.maximum(scores, 1e-6)
        boxes_t, scores_t, classes_t = tf.constant(boxes), tf.constant(scores), tf.constant(classes)
        per_class_t = tf.constant(per_class)

        def batched():
            return nms.batched_nms(boxes_t, scores_t, classes_t, 0.5)

        @tf.function
        def padded():
            return nms.padded_batched_nms(boxes_t[None], per_class_t, max_detections=n, iou_threshold=0.5,
                                          score_threshold=0.0, pre_nms_top_k=None)

        combined_fn = tf.function(lambda: tf.image.combined_non_max_suppression(
            boxes_t[None, :, None], per_class_t, n, n, 0.5, 1e-7, pad_per_class=False, clip_boxes=False))

        kept = int(tf.size(batched()))
        for label, fn in (("ops.nms.batched_nms", batched), ("ops.nms.padded_batched_nms (decoder path)", padded),
                          ("tf.image.combined_non_max_suppression", combined_fn)):
            times = benchutil.repeat_timed(fn, repeats=20 if n <= 1000 else 10)
            rows.append({"op": label, "n": n, "ms": 1000 * benchutil.median(times), "best": 1000 * min(times),
                         "kept": kept, "torchvision": torch_ms.get(f"batched_nms {n}", "")})
    return rows


def build_detector(label, precision="float32"):
    import keras

    from tfvision.config import ExperimentConfig, from_dict, to_dict
    from tfvision.models import build_model

    name, backbone, size, options = DETECTORS[label]
    size = 96 if benchutil.quick() else size
    config = to_dict(ExperimentConfig())
    config["data"]["image_size"] = size
    config["model"].update(name=name, num_classes=NUM_CLASSES, backbone={"name": backbone, "weights": "none"})
    for section, values in options.items():
        config["model"][section].update(values)
    keras.mixed_precision.set_global_policy(precision)
    try:
        return build_model(from_dict(ExperimentConfig, config)), size
    finally:
        keras.mixed_precision.set_global_policy("float32")


def bench_detectors(torch_ms: dict, bfloat16: bool = True) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    rows = []
    for precision in ("float32", "mixed_bfloat16") if bfloat16 else ("float32",):
        for label in DETECTORS:
            model, size = build_detector(label, precision)
            detect = tf.function(model.detect, reduce_retracing=True)
            for batch in (1, 8):
                images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)), tf.float32)
                times = benchutil.repeat_timed(lambda: detect(images), repeats=10 if batch == 1 else 5)
                median = benchutil.median(times)
                # torchvision's figures are float32 at batch 1: compared with ours at the same.
                compared = batch == 1 and precision == "float32"
                same = torch_ms.get(TORCHVISION_SAME.get(label), "") if compared else ""
                rows.append({
                    "model": label + ("" if precision == "float32" else ", bfloat16"), "size": f"{size}x{size}",
                    "batch": batch, "ms_img": 1000 * median / batch, "ips": batch / median,
                    "anchors": int(model.decode_predictions(model(images[:1]))[1].shape[1]),
                    "torchvision": same, "speedup": same / (1000 * median) if same else "",
                    "target": same / TARGET_SPEEDUP if same else "",
                })
            del model, detect
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown section here (default: print it)")
    parser.add_argument("--skip-models", action="store_true", help="only NMS")
    args = parser.parse_args()
    info = benchutil.machine_info()
    nms_torch, nms_note = benchutil.torch_reference("nms")
    lines = [
        "## Detection: NMS and single-stage detectors (`bench/detection.py`)",
        "",
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} cores; Python {info['python']}, TensorFlow "
        f"{info.get('tensorflow')}, Keras {info.get('keras')}. Protocol in the script's docstring.",
        "",
        "### NMS alone (80 classes, IoU 0.5, every survivor kept)",
        "",
        nms_note,
        "",
        benchutil.md_table(bench_nms(nms_torch), [("op", "op", ""), ("N", "n", ""), ("median ms", "ms", "{:.2f}"),
                                         ("best ms", "best", "{:.2f}"), ("kept", "kept", ""),
                                         ("torchvision batched_nms ms", "torchvision", "{:.2f}")]),
    ]
    if not args.skip_models:
        ssd_torch, ssd_note = benchutil.torch_reference("ssd")
        no_bfloat16 = benchutil.bfloat16_note()
        lines += [
            "",
            "### Detectors: `model.detect` (network + decode + NMS), random weights, 80 classes",
            "",
            ssd_note,
            "",
            benchutil.md_table(bench_detectors(ssd_torch, bfloat16=no_bfloat16 is None), [
                ("model", "model", ""), ("input", "size", ""), ("batch", "batch", ""),
                ("median ms/img", "ms_img", "{:.1f}"), ("images/s", "ips", "{:.2f}"), ("anchors", "anchors", ""),
                ("torchvision ms/img", "torchvision", "{:.1f}"), ("torchvision / ours", "speedup", "{:.2f}x"),
                ("1.2x target ms", "target", "{:.0f}"),
            ]),
            "",
            f"load average {benchutil.load_average()}. torchvision columns: the torchvision model of the same "
            "architecture and input (`ssd300_vgg16`; `ssdlite320_mobilenet_v3_large` with MobileNetV3-Large's full "
            "last stage, as tfvision's mobilenetv3large). torchvision builds that model without ImageNet weights "
            "with a halved last stage (its \"reduced tail\"): "
            + (f"{ssd_torch['ssdlite320_mobilenet_v3_large']:.1f} ms/img in this run. "
               if "ssdlite320_mobilenet_v3_large" in ssd_torch else "")
            + "torchvision has no MobileNetV2 SSDLite. "
            + (f"bfloat16 rows left out: {no_bfloat16}." if no_bfloat16 else
               "bfloat16 rows: Keras' `mixed_bfloat16` policy (bfloat16 compute on the CPU's bfloat16 units, "
               "float32 variables and outputs); torchvision's figures are float32."),
        ]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
