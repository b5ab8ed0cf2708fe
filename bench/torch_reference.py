"""torchvision's side of the side-by-side comparisons in bench/detection.py and bench/two_stage.py.

Run by those benches, in the same `make bench` run, with the Python of the separate torch environment that
`make bench` creates (.bench-venv-torch: torch and torchvision, CPU; never a dependency of tfvision). Each
group prints one JSON object, name -> median milliseconds per call (per image for models):

  nms        `torchvision.ops.batched_nms` (80 classes, IoU 0.5) on `bench_inputs.nms_inputs(n)`, n = 1k, 10k.
  roi        `torchvision.ops.roi_align` (7x7, scale 1, aligned; sampling ratio 2 and 0) and `roi_pool` on
             `bench_inputs.roi_features()` (NCHW) with K = 512 and 2,000 `bench_inputs.roi_boxes`.
  ssd        `ssd300_vgg16` at 300 and `ssdlite320_mobilenet_v3_large` at 320, batch 1, torchvision's test
             settings. SSDLite twice: as torchvision builds it without ImageNet weights (it then halves the
             last stage's channels: "reduced tail") and with the full tail (tfvision's mobilenetv3large).
  fpn        `fasterrcnn_resnet50_fpn` and `maskrcnn_resnet50_fpn` with min_size = max_size = 512, batch 1,
             box score threshold 0.05 (torchvision's default) and 0 ("@0"); at 0.05 also under
             `torch.autocast("cpu", dtype=torch.bfloat16)` (" bf16"), beside tfvision's bfloat16 rows.

Protocol (that of the tfvision rows): random weights (seed 0), uniform [0, 1] images, `torch.inference_mode`,
2 threads, one untimed warm-up call, then the median of timed calls. Models include their own transform and
post-processing, as torchvision users run them.

Usage: .bench-venv-torch/bin/python bench/torch_reference.py {nms,roi,ssd,fpn}
BENCH_QUICK=1: a smoke run (tiny inputs, two timed calls; numbers meaningless).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_inputs  # noqa: E402
import benchutil  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models import detection  # noqa: E402


def median_ms(fn, repeats, warmup=1):
    return 1000 * benchutil.median(benchutil.repeat_timed(fn, repeats=repeats, warmup=warmup))


def bench_nms(quick):
    results = {}
    for n in (200, 400) if quick else (1000, 10000):
        boxes, scores, classes = (torch.from_numpy(a) for a in bench_inputs.nms_inputs(n))
        results[f"batched_nms {n}"] = median_ms(
            lambda: torchvision.ops.batched_nms(boxes, scores, classes, 0.5), repeats=20 if n <= 1000 else 10,
            warmup=3)
    return results


def bench_roi(quick):
    channels, size = (32, 16) if quick else (256, 64)
    features = torch.from_numpy(bench_inputs.roi_features(channels, size)).permute(0, 3, 1, 2).contiguous()
    results = {}
    for k in (32, 64) if quick else (512, 2000):
        boxes = torch.from_numpy(bench_inputs.roi_boxes(k) * (size / 64))
        rois = torch.cat([torch.zeros(k, 1), boxes], 1)
        ops = {
            "roi_align sr=2": lambda: torchvision.ops.roi_align(features, rois, (7, 7), 1.0, 2, True),
            "roi_align sr=0": lambda: torchvision.ops.roi_align(features, rois, (7, 7), 1.0, 0, True),
            "roi_pool": lambda: torchvision.ops.roi_pool(features, rois, (7, 7), 1.0),
        }
        for label, fn in ops.items():
            results[f"{label} {k}"] = median_ms(fn, repeats=30 if k <= 512 else 10, warmup=2)
    return results


def _ssdlite_full_tail():
    """ssdlite320_mobilenet_v3_large without ImageNet weights but with MobileNetV3-Large's full last stage."""
    original = detection.ssdlite.mobilenet_v3_large
    detection.ssdlite.mobilenet_v3_large = lambda **kwargs: original(**{**kwargs, "reduced_tail": False})
    try:
        return detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    finally:
        detection.ssdlite.mobilenet_v3_large = original


def _model_ms(build, size, repeats, autocast_dtype=None):
    torch.manual_seed(0)
    model = build().eval()
    images = [torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))]
    if autocast_dtype is None:
        return median_ms(lambda: model(images), repeats=repeats)
    with torch.autocast("cpu", dtype=autocast_dtype):
        return median_ms(lambda: model(images), repeats=repeats, warmup=2)


def bench_ssd(quick):  # noqa: ARG001 (the same size either way: the architectures are fixed)
    return {
        "ssd300_vgg16": _model_ms(lambda: detection.ssd300_vgg16(weights=None, weights_backbone=None), 300, 10),
        "ssdlite320_mobilenet_v3_large": _model_ms(
            lambda: detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None), 320, 10),
        "ssdlite320_mobilenet_v3_large full tail": _model_ms(_ssdlite_full_tail, 320, 10),
    }


def bench_fpn(quick, bfloat16=True):
    size = 128 if quick else 512
    results = {}
    for name, constructor, repeats in (("faster_rcnn", detection.fasterrcnn_resnet50_fpn, 8),
                                       ("mask_rcnn", detection.maskrcnn_resnet50_fpn, 5)):
        for suffix, threshold in (("", 0.05), ("@0", 0.0)):
            build = functools.partial(constructor, weights=None, weights_backbone=None, min_size=size,
                                      max_size=size, box_score_thresh=threshold)
            results[name + suffix] = _model_ms(build, size, repeats)
            if threshold and bfloat16:
                results[name + " bf16"] = _model_ms(build, size, repeats, autocast_dtype=torch.bfloat16)
    return results


GROUPS = {"nms": bench_nms, "roi": bench_roi, "ssd": bench_ssd, "fpn": bench_fpn}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", choices=sorted(GROUPS))
    parser.add_argument("--skip-bfloat16", action="store_true",
                        help="no bfloat16 figures (the tfvision side has none: a CPU without bfloat16 instructions)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with torch.inference_mode():
        if args.group == "fpn":
            results = bench_fpn(benchutil.quick(), bfloat16=not args.skip_bfloat16)
        else:
            results = GROUPS[args.group](benchutil.quick())
    results["versions"] = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
