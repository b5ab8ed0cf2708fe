"""The `tfvision` command.

    tfvision data make-shapes --out DIR --train N --val M --size S --seed K
    tfvision data show DIR --out grid.png
    tfvision data stats DIR
    tfvision train --config configs/shapes/unet.yaml [--set key=value ...]
    tfvision evaluate --config ... [--checkpoint FILE]
    tfvision export --config ... [--version N]
    tfvision predict --model saved_models/<experiment>/<version> IMAGES ... --out DIR
    tfvision tune --config ... --tuner random|bayesian|hyperband --max-trials N [--out best.yaml]

TensorFlow is imported only by the commands that need it, so `tfvision --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys

# TensorFlow's C++ start-up chatter is not for users of a command line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        # Errors the user can fix: one clear line, no traceback.
        print(f"tfvision: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfvision",
        description="Image segmentation and object detection with TensorFlow / Keras 3.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    data = commands.add_parser("data", help="make, show and describe data sets")
    data_commands = data.add_subparsers(title="data commands", metavar="ACTION")
    data.set_defaults(run=lambda _args: data.print_help() or 2)

    make = data_commands.add_parser("make-shapes", help="write the built-in shapes data set (COCO format)")
    make.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    make.add_argument("--train", type=int, default=2000, help="number of training images")
    make.add_argument("--val", type=int, default=200, help="number of validation images")
    make.add_argument("--size", type=int, default=128, help="image side in pixels")
    make.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing folder when done")
    make.set_defaults(run=_make_shapes)

    show = data_commands.add_parser("show", help="render a grid of annotated examples as PNG")
    show.add_argument("dir", help="a COCO-format folder (annotations/instances_<split>.json, images/<split>/)")
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument("--split", default="train")
    show.add_argument("--num", type=int, default=16, help="number of examples")
    show.add_argument("--columns", type=int, default=4)
    show.set_defaults(run=_show)

    stats = data_commands.add_parser("stats", help="print objects per class and the box-size histogram")
    stats.add_argument("dir", help="a COCO-format folder")
    stats.add_argument("--split", action="append", help="split(s) to describe (default: every split found)")
    stats.set_defaults(run=_stats)

    train = commands.add_parser("train", help="train the model of an experiment config")
    _config_arguments(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="score a trained model on the val split")
    _config_arguments(evaluate)
    evaluate.add_argument("--checkpoint", help="a .keras file (default: <train.model_dir>/checkpoints/best.keras)")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", help="write a SavedModel for TF Serving")
    _config_arguments(export)
    export.add_argument("--checkpoint", help="a .keras file (default: <train.model_dir>/checkpoints/best.keras)")
    export.add_argument("--version", type=int, help="version folder number (default: the next free one)")
    export.set_defaults(run=_export)

    predict = commands.add_parser("predict", help="run an exported model on images and draw the results")
    predict.add_argument("--model", required=True, help="an export folder, saved_models/<experiment>/<version>")
    predict.add_argument("images", nargs="+", help="image files (JPEG or PNG)")
    predict.add_argument("--out", required=True, help="folder for the PNG overlays")
    predict.set_defaults(run=_predict)

    tune = commands.add_parser("tune", help="search the config's search.space with Keras Tuner")
    _config_arguments(tune)
    tune.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default="random",
                      help="search algorithm (default: random)")
    tune.add_argument("--max-trials", type=int, default=10, help="number of models to train (default: 10)")
    tune.add_argument("--out", help="YAML file for the best trial's config (default: <train.model_dir>/best.yaml)")
    tune.add_argument("--overwrite", action="store_true",
                      help="start over even if <train.model_dir>/tuning holds an earlier search")
    tune.set_defaults(run=_tune)
    return parser


def _config_arguments(parser):
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/shapes/unet.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")


def _load(args):
    from tfvision import tasks
    from tfvision.config import load_config

    config = load_config(args.config, overrides=args.set)
    return config, tasks.task_for(config)


def _print_metrics(metrics: dict, indent: str = "") -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_metrics(value, indent + "  ")
        else:
            print(f"{indent}{key}: {value:.4f}" if isinstance(value, float) else f"{indent}{key}: {value}")


def _train(args) -> int:
    config, task = _load(args)
    _print_metrics(task.train(config))
    return 0


def _evaluate(args) -> int:
    config, task = _load(args)
    _print_metrics(task.evaluate(config, checkpoint=args.checkpoint))
    return 0


def _export(args) -> int:
    config, task = _load(args)
    path = task.export(config, checkpoint=args.checkpoint, version=args.version)
    print(f"exported to {path}")
    return 0


def _tune(args) -> int:
    from tfvision.config import load_config
    from tfvision.tuning import run_search

    config = load_config(args.config, overrides=args.set)
    result = run_search(config, tuner=args.tuner, max_trials=args.max_trials, out=args.out, overwrite=args.overwrite)
    print(f"best of {result.num_trials} trial(s): {result.objective} = {result.score:.4f} ({result.direction})")
    for key, value in result.values.items():
        print(f"  {key}: {value:.6g}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"wrote {result.config_path}; train it with: tfvision train --config {result.config_path}")
    return 0


def _predict(args) -> int:
    from tfvision.predict import predict_images

    written = predict_images(args.model, args.images, args.out)
    print(f"wrote {len(written)} overlays to {args.out}")
    return 0


def _make_shapes(args) -> int:
    from tfvision.data import synthetic

    path = synthetic.make_shapes(args.out, args.train, args.val, args.size, args.seed, overwrite=args.overwrite)
    print(f"wrote the shapes data set to {path}")
    return 0


def _show(args) -> int:
    from tfvision import visualize
    from tfvision.data import coco

    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}.")
    dataset, label_map = coco.load_coco_folder(args.dir, args.split, include_masks=True)
    panels = []
    for example in dataset.take(args.num).as_numpy_iterator():
        image = visualize.draw_masks(example["images"], example["masks"], example["classes"])
        panels.append(visualize.draw_boxes(image, example["boxes"], example["classes"], label_map=label_map))
    if not panels:
        raise ValueError(f"split '{args.split}' of {args.dir} has no images to show.")
    visualize.save_png(args.out, visualize.make_grid(panels, columns=args.columns))
    print(f"wrote {len(panels)} examples to {args.out}")
    return 0


def _stats(args) -> int:
    from tfvision.data import stats

    folder = os.path.join(args.dir, "annotations")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{args.dir} has no annotations/ folder; pass a COCO-format folder.")
    splits = args.split or sorted(
        name[len("instances_"):-len(".json")]
        for name in os.listdir(folder)
        if name.startswith("instances_") and name.endswith(".json")
    )
    if not splits:
        raise FileNotFoundError(f"{folder} holds no instances_<split>.json file.")
    for split in splits:
        report = stats.annotation_stats(os.path.join(folder, f"instances_{split}.json"))
        print(stats.format_stats(report, title=f"== {split} =="))
    return 0


if __name__ == "__main__":
    sys.exit(main())
