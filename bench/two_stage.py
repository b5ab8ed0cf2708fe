"""Speed of tfvision's two-stage detectors and of their ROI ops on CPU, beside torchvision on this machine.

ROI ops (`bench_inputs`, the same inputs for both sides): one 64x64 feature map of 256 channels from a
standard normal (ours NHWC `[1, 64, 64, 256]`, torchvision's NCHW), K = 512 and 2,000 boxes in feature pixels
(corner uniform in [0, 48], sides uniform in [2, 16], seed 1; xyxy there, yxyx here), spatial_scale 1, 7x7
output: `ops.roi.roi_align` with sampling_ratio 2 and 0 (adaptive), aligned=True, and `ops.roi.roi_pool`,
each in a `tf.function`, beside `torchvision.ops.roi_align` / `roi_pool` measured in the same run
(bench/torch_reference.py, 2 threads), with the ratio torchvision / ours.

R-CNN vs Fast R-CNN vs Faster R-CNN: the same ResNet50 (random weights) cut at level 4 (stride 16, 1024
channels), 512x512 input, batch 1, 80 classes, the same head (7x7x1024 region features -> two fully
connected layers of 1024 -> class logits and per-class boxes), the same number P of regions classified, and
for R-CNN and Fast R-CNN the very same proposals: fast-mode selective search (`tfvision.data.proposals`) on a
synthetic 512x512 image of random rectangles and ellipses, its first P boxes (filled up with grid boxes).
  * R-CNN: each proposal warped to 112x112 (context padding 7: 16 at 227, scaled), the backbone run on every
    crop (112 / 16 = the 7x7 map the head takes), so nothing is shared between regions;
  * Fast R-CNN: the backbone once on the image, ROI max pooling (7x7) of each proposal from its stride-16 map;
  * Faster R-CNN (no FPN): the same backbone once, an RPN (3 aspect ratios x 3 scales at stride 16) whose
    best P proposals after NMS (pre-NMS 1000) are ROI max pooled (7x7) as in the paper; no selective search.
  Timed: `model.detect` (network + decode + per-class NMS) in a `tf.function`; selective search is timed
  apart (it runs outside TensorFlow, on the CPU, per image) and added in the "with proposals" column.

Faster / Mask R-CNN ResNet50-FPN at 512x512 (torchvision's `fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn`
with `min_size=max_size=512`): random weights, batch 1, 80 classes, `model.detect` in a `tf.function`.
torchvision's test settings, matched here: FPN P2-P6, anchors 32..512 x 3 aspect ratios, RPN pre-NMS top 1000
per level, NMS 0.7, post-NMS top 1000 proposals, ROI align 7x7 (sampling ratio 2, aligned) from P2-P5 with
canonical size 224, 1024-unit box head, box score threshold 0.05, NMS 0.5, 100 detections; Mask R-CNN's
14x14 ROI align, 4 convs of 256, 2x deconvolution, 28x28 masks. Not matched: torchvision's 91 classes (80
here) and its transform (normalize + resize, ~10 ms); torchvision's Mask R-CNN pastes the 28x28 masks into
512x512 image masks inside the model, tfvision's `detect` returns box masks, so a second Mask R-CNN row adds
`ops.masks.paste_masks` to 512x512 in the same `tf.function`. How many boxes pass the 0.05 threshold depends
on the random weights (torchvision's kept 100 per image; "dets/img" says how many ours kept); rows at score
threshold 0 (always 100 detections, masks for all 100) are beside torchvision's `@thresh0` rows. The
"bfloat16" rows build the same models under Keras' `mixed_bfloat16` policy (bfloat16 convolutions and matmuls,
float32 variables and outputs), measured only on CPUs with bfloat16 instructions (AMX-BF16, AVX512-BF16);
they compare with torchvision's models run under `torch.autocast("cpu", dtype=torch.bfloat16)` (its mixed
precision for CPU inference).
torchvision's two models are measured in the same run, just before tfvision's (bench/torch_reference.py).

Timing: default TF threading, one untimed warm-up call, medians of timed calls. The 2 cores are shared with
other users: the load average (`uptime`) is printed with every table.

Usage: python bench/two_stage.py [--out FILE] [--skip-models] [--skip-fpn]
BENCH_QUICK=1: a smoke run (tiny inputs, few boxes; numbers meaningless).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfvision  # noqa: E402,F401  (before TensorFlow: its settings, as `tfvision` users get them)

import bench_inputs  # noqa: E402
import benchutil  # noqa: E402

NUM_CLASSES = 80
TARGET_SPEEDUP = {"ops": 4.0, "models": 1.2}


def roi_boxes(k, seed=1, feature_size=64):
    """`bench_inputs.roi_boxes` (the boxes torchvision gets) as yxyx."""
    return bench_inputs.xyxy_to_yxyx(bench_inputs.roi_boxes(k, seed, feature_size))


# --- ROI ops ---


def bench_roi_ops(torch_ms: dict) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from tfvision.ops import roi

    size, channels = (16, 32) if benchutil.quick() else (64, 256)
    features = tf.constant(bench_inputs.roi_features(channels, size))
    rows = []
    for k in (32, 64) if benchutil.quick() else (512, 2000):
        boxes = tf.constant(roi_boxes(k) * (size / 64))
        indices = tf.zeros([k], tf.int32)
        ops = {
            "roi_align sr=2": tf.function(lambda b=boxes, i=indices: roi.roi_align(features, b, i, 7, 1.0, 2, True)),
            "roi_align sr=0": tf.function(lambda b=boxes, i=indices: roi.roi_align(features, b, i, 7, 1.0, 0, True)),
            "roi_pool": tf.function(lambda b=boxes, i=indices: roi.roi_pool(features, b, i, 7, 1.0)),
        }
        for label, fn in ops.items():
            times = benchutil.repeat_timed(fn, repeats=30 if k <= 512 else 10, warmup=2)
            ms = 1000 * benchutil.median(times)
            theirs = torch_ms.get(f"{label} {k}", "")
            rows.append({"op": label, "k": k, "ms": ms, "best": 1000 * min(times), "torchvision": theirs,
                         "speedup": theirs / ms if theirs else ""})
    return rows


# --- R-CNN, Fast R-CNN, Faster R-CNN on shared settings ---


def synthetic_image(size, seed=0):
    """uint8 `[size, size, 3]`: random filled rectangles and ellipses on a smooth background, so selective
    search finds object-like regions (uniform noise gives only pixel-sized segments)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([120 + 60 * yy, 100 + 80 * xx, 140 - 50 * yy * xx], -1).astype(np.uint8)
    for _ in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = (int(v) for v in rng.integers(0, size - size // 8, 2))
        w, h = (int(v) for v in rng.integers(size // 16, size // 3, 2))
        if rng.uniform() < 0.5:
            cv2.rectangle(image, (x0, y0), (min(x0 + w, size - 1), min(y0 + h, size - 1)), color, -1)
        else:
            cv2.ellipse(image, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, color, -1)
    return image


def region_config(name, size, regions):
    """The shared settings of the R-CNN / Fast R-CNN / Faster R-CNN comparison (module docstring)."""
    from tfvision.config import ExperimentConfig, from_dict, to_dict

    config = to_dict(ExperimentConfig())
    config["data"]["image_size"] = size
    config["model"].update(name=name, num_classes=NUM_CLASSES, backbone={"name": "resnet50", "weights": "none"})
    units = 64 if benchutil.quick() else 1024
    if name == "rcnn":
        crop = 32 if benchutil.quick() else 112
        config["model"]["rcnn"].update(num_proposals=regions, crop_size=crop, context_padding=crop * 16 // 227,
                                       level=4, fc_units=units)
    elif name == "fast_rcnn":
        config["model"]["fast_rcnn"].update(num_proposals=regions, level=4, roi_size=7, fc_units=units)
    else:
        config["model"]["faster_rcnn"].update(fpn=False, feature_level=4, roi_pooling="pool", roi_size=7,
                                              head_units=units, pre_nms_top_n_test=1000,
                                              post_nms_top_n_test=regions)
    return from_dict(ExperimentConfig, config)


def bench_region_models() -> tuple[list[dict], dict]:
    import numpy as np
    import tensorflow as tf

    from tfvision.data import proposals as proposal_lib
    from tfvision.models import build_model

    size = 64 if benchutil.quick() else 512
    regions = 16 if benchutil.quick() else 256
    image = synthetic_image(size)
    search_times = benchutil.repeat_timed(lambda: proposal_lib.selective_search(image, "fast", 128), repeats=3)
    search_s = benchutil.median(search_times)
    boxes, found = proposal_lib.padded_proposals(image, regions, "fast", 128)
    images = tf.constant(image[None].astype(np.float32))
    proposals = tf.constant(boxes[None])
    info = {"size": size, "regions": regions, "found": found, "search_s": search_s,
            "searched": len(proposal_lib.selective_search(image, "fast", 128))}

    rows = []
    for name, label in (("rcnn", "R-CNN"), ("fast_rcnn", "Fast R-CNN"), ("faster_rcnn", "Faster R-CNN")):
        model = build_model(region_config(name, size, regions))
        inputs = images if name == "faster_rcnn" else {"images": images, "proposals": proposals}
        detect = tf.function(model.detect)
        start = time.perf_counter()
        detect(inputs)
        first = time.perf_counter() - start
        times = benchutil.repeat_timed(lambda: detect(inputs), repeats=3 if name == "rcnn" else 5, warmup=0)
        seconds = benchutil.median(times)
        with_proposals = seconds + (search_s if name != "faster_rcnn" else 0.0)
        rows.append({"model": label, "s": seconds, "first": first, "with": with_proposals, "ips": 1 / with_proposals,
                     "regions": regions, "proposals": "RPN" if name == "faster_rcnn" else "selective search"})
        del model, detect
    by_name = {row["model"]: row for row in rows}
    info["ratio"] = by_name["R-CNN"]["s"] / by_name["Fast R-CNN"]["s"]
    info["ratio_faster"] = by_name["Fast R-CNN"]["with"] / by_name["Faster R-CNN"]["with"]
    return rows, info


# --- Faster / Mask R-CNN ResNet50-FPN against torchvision ---


def fpn_config(name, size, score_threshold):
    """torchvision's fasterrcnn/maskrcnn_resnet50_fpn test settings (module docstring), 80 classes."""
    from tfvision.config import ExperimentConfig, from_dict, to_dict

    config = to_dict(ExperimentConfig())
    config["data"]["image_size"] = size
    config["model"].update(name=name, num_classes=NUM_CLASSES, backbone={"name": "resnet50", "weights": "none"})
    config["model"]["faster_rcnn"].update(
        fpn=True, min_level=2, max_level=6, fpn_filters=256, aspect_ratios=[0.5, 1.0, 2.0], rpn_filters=256,
        rpn_nms_iou=0.7, rpn_min_size=0.001, pre_nms_top_n_test=1000, post_nms_top_n_test=1000,
        roi_pooling="align", roi_size=7, roi_sampling_ratio=2, canonical_size=224.0, head_units=1024,
    )
    config["model"]["mask_rcnn"].update(roi_size=14, convs=4, filters=256)
    config["model"]["detection"].update(max_detections=100, score_threshold=score_threshold, iou_threshold=0.5,
                                        class_agnostic=False, soft_nms_sigma=0.0)
    return from_dict(ExperimentConfig, config)


def bench_fpn_models(torch_ms: dict, flops: dict, bfloat16: bool = True) -> list[dict]:
    """The ResNet50-FPN rows; fills `flops` with Faster R-CNN's FLOPs per image (float32 `detect`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfvision.models import build_model
    from tfvision.ops import masks as mask_ops

    size = 128 if benchutil.quick() else 512
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32))
    rows = []
    precisions = ("float32", "mixed_bfloat16") if bfloat16 else ("float32",)
    models = [(name, label, precision) for precision in precisions
              for name, label in (("faster_rcnn", "Faster R-CNN R50-FPN"), ("mask_rcnn", "Mask R-CNN R50-FPN"))]
    for name, label, precision in models:
        # bfloat16 compute (float32 variables, boxes and scores): what AMX-BF16 CPUs run fastest.
        keras.mixed_precision.set_global_policy(precision)
        model = build_model(fpn_config(name, size, 0.05))
        keras.mixed_precision.set_global_policy("float32")
        label += "" if precision == "float32" else ", bfloat16"
        variants = [("detect", 0.05, False)]
        if name == "mask_rcnn":
            variants.append(("detect + paste masks", 0.05, True))
        if not benchutil.quick() and precision == "float32":
            variants.append(("detect", 0.0, False))
            if name == "mask_rcnn":
                variants.append(("detect + paste masks", 0.0, True))
        if name == "faster_rcnn" and precision == "float32":
            flops["faster_rcnn"] = benchutil.graph_flops(model.detect, size)
        for what, threshold, paste in variants:
            model.decoder.score_threshold = threshold

            def run(images, paste=paste):
                detections = model.detect(images)
                if paste:
                    detections["image_masks"] = mask_ops.paste_masks(detections["masks"], detections["boxes"],
                                                                     (size, size))
                return detections

            detect = tf.function(run)
            start = time.perf_counter()
            detections = detect(images)
            first = time.perf_counter() - start
            times = benchutil.repeat_timed(lambda: detect(images), repeats=8 if name == "faster_rcnn" else 5, warmup=1)
            ms = 1000 * benchutil.median(times)
            key = name + ("@0" if threshold == 0.0 else "") + ("" if precision == "float32" else " bf16")
            # torchvision's Mask R-CNN pastes its masks at image size, so it compares with the pasting rows.
            theirs = torch_ms.get(key, "") if name == "faster_rcnn" or paste else ""
            rows.append({"model": label, "what": what, "threshold": threshold, "ms": ms, "best": 1000 * min(times),
                         "ips": 1000 / ms, "first": first, "dets": int(detections["num_detections"][0]),
                         "torchvision": theirs, "speedup": theirs / ms if theirs else "",
                         "target": theirs / TARGET_SPEEDUP["models"] if theirs else ""})
        del model
    return rows


def _floor_note(flops: int, rows: list[dict], torch_ms: dict, matmul: float) -> str:
    """What float32 Faster R-CNN's FLOPs allow: its time at the machine's matmul rate, against both sides."""
    ours = next(r["ms"] for r in rows if r["model"] == "Faster R-CNN R50-FPN" and r["threshold"] == 0.05)
    gflop = flops / 1e9
    floor_ms = 1000 * gflop / matmul
    note = (f"Faster R-CNN R50-FPN, float32: {gflop:.1f} GFLOP per image (tf profiler; convolutions and fully "
            f"connected layers are nearly all of it), {floor_ms:.0f} ms at this machine's float32 matmul rate "
            f"measured in this run ({matmul:.0f} GFLOP/s, 4096x4096): tfvision runs at {gflop / ours * 1000:.0f} "
            f"GFLOP/s ({floor_ms / ours:.0%} of that rate)")
    theirs = torch_ms.get("faster_rcnn")
    if theirs:
        target = theirs / TARGET_SPEEDUP["models"]
        note += (f", torchvision at {gflop / theirs * 1000:.0f} GFLOP/s ({floor_ms / theirs:.0%}); the "
                 f"{TARGET_SPEEDUP['models']}x target ({target:.0f} ms) asks for {floor_ms / target:.0%} of it over "
                 "the whole model")
    return note + "."


def check_threshold_attribute():
    """`DetectionDecoder.score_threshold` is read at trace time; fail loudly if it is named otherwise."""
    from tfvision.layers.detection_decoder import DetectionDecoder

    decoder = DetectionDecoder()
    if not hasattr(decoder, "score_threshold"):
        raise AttributeError("bench/two_stage.py: DetectionDecoder has no attribute 'score_threshold' to set.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown section here (default: print it)")
    parser.add_argument("--skip-models", action="store_true", help="only the ROI ops")
    parser.add_argument("--skip-fpn", action="store_true", help="skip the ResNet50-FPN rows")
    args = parser.parse_args()
    info = benchutil.machine_info()
    roi_torch, roi_note = benchutil.torch_reference("roi")
    lines = [
        "## Two-stage detectors and ROI ops (`bench/two_stage.py`)",
        "",
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} cores; Python {info['python']}, TensorFlow "
        f"{info.get('tensorflow')}, Keras {info.get('keras')}. Protocol in the script's docstring.",
        "",
        "### ROI ops (1x64x64x256 features, 7x7, spatial_scale 1, `tf.function`)"
        + (" [BENCH_QUICK: 1x16x16x32]" if benchutil.quick() else ""),
        "",
        f"{roi_note} Before: load average {benchutil.load_average()} (1, 5, 15 min).",
        "",
        benchutil.md_table(bench_roi_ops(roi_torch), [
            ("op", "op", ""), ("K boxes", "k", ""), ("median ms", "ms", "{:.2f}"), ("best ms", "best", "{:.2f}"),
            ("torchvision ms", "torchvision", "{:.1f}"), ("torchvision / ours", "speedup", "{:.1f}x")]),
        "",
        f"After: load average {benchutil.load_average()} (1, 5, 15 min). Target: roi_align at least "
        f"{TARGET_SPEEDUP['ops']:.0f}x faster than torchvision's.",
    ]
    if not args.skip_models:
        rows, region = bench_region_models()
        lines += [
            "",
            f"### R-CNN vs Fast R-CNN vs Faster R-CNN (ResNet50 to stride 16, {region['size']}x{region['size']}, "
            f"batch 1, {region['regions']} regions each)",
            "",
            f"Proposals for R-CNN and Fast R-CNN: selective search (fast mode) found {region['searched']} boxes on "
            f"the synthetic image; the first {min(region['found'], region['regions'])} of them plus "
            f"{max(region['regions'] - region['found'], 0)} grid boxes are the {region['regions']} proposals both "
            f"classified. Selective search: {region['search_s']:.2f} s per image (median of 3). "
            f"load average {benchutil.load_average()} (1, 5, 15 min).",
            "",
            benchutil.md_table(rows, [
                ("model", "model", ""), ("proposals", "proposals", ""), ("regions classified", "regions", ""),
                ("s/img (detect)", "s", "{:.3f}"), ("s/img with proposals", "with", "{:.3f}"),
                ("images/s", "ips", "{:.3f}"), ("first call s", "first", "{:.1f}")]),
            "",
            f"R-CNN / Fast R-CNN (detect, same proposals): **{region['ratio']:.1f}x**. Fast R-CNN / Faster R-CNN "
            f"(with proposals): {region['ratio_faster']:.1f}x.",
        ]
        if not args.skip_fpn:
            check_threshold_attribute()
            no_bfloat16 = benchutil.bfloat16_note()
            fpn_torch, fpn_note = benchutil.torch_reference("fpn", bfloat16=no_bfloat16 is None)
            flops = {}
            matmul = benchutil.matmul_gflops(4096, 5)
            fpn_rows = bench_fpn_models(fpn_torch, flops, bfloat16=no_bfloat16 is None)
            floor = _floor_note(flops["faster_rcnn"], fpn_rows, fpn_torch, matmul)
            lines += [
                "",
                "### Faster / Mask R-CNN ResNet50-FPN, 512x512, batch 1 (`model.detect` in a `tf.function`)"
                + (" [BENCH_QUICK: 128x128]" if benchutil.quick() else ""),
                "",
                fpn_note,
                "",
                benchutil.md_table(fpn_rows, [
                    ("model", "model", ""), ("timed", "what", ""), ("score thresh", "threshold", ""),
                    ("dets/img", "dets", ""), ("median ms/img", "ms", "{:.1f}"), ("best ms", "best", "{:.1f}"),
                    ("images/s", "ips", "{:.2f}"), ("torchvision ms/img", "torchvision", "{:.1f}"),
                    ("torchvision / ours", "speedup", "{:.2f}x"), ("1.2x target ms", "target", "{:.0f}")]),
                "",
                f"load average {benchutil.load_average()} (1, 5, 15 min). torchvision: "
                "`fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn` with min_size = max_size = 512 and "
                "box_score_thresh as the row's (0.05 is its default)."
                + (f" bfloat16 rows left out: {no_bfloat16}." if no_bfloat16 else ""),
                "",
                floor,
            ]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
