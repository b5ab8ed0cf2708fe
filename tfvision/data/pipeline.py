"""The input pipeline: a loader's per-image dataset -> shuffled, augmented, batched, prefetched dicts.

Training draws one stateless seed per example from `tf.data.Dataset.random` zipped alongside the data, so
the augmentation is reproducible given `seed` whatever the map's parallelism, and different in every epoch.
Per-example work is a few fused tf ops on the image (one output-sized resize, an optional flip of the
source); `keys` drops what the model does not use (instance masks above all) before any work is done.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from tfvision.data import transforms

# Augmentations by name, in the order they run. Flip runs first, on the (smaller, uint8) source image.
AUGMENTATIONS = ("flip", "scale_jitter", "photometric")
# Photometric jitter is left out by default: on CPU its HSV round trips on a 512-px image (~6 ms) cost more
# than decoding a 640x480 JPEG and resizing it (~4 ms). Ask for it with augment=AUGMENTATIONS.
DEFAULT_AUGMENT = ("flip", "scale_jitter")
# Keys the pipeline itself adds.
DERIVED_KEYS = ("image_scale",)


def _augment_options(augment) -> dict[str, dict]:
    """`augment` (names, or a mapping name -> keyword arguments) as {name: kwargs}, checked."""
    if augment is None:
        return {}
    if isinstance(augment, str):
        augment = (augment,)
    options = dict(augment) if isinstance(augment, Mapping) else {name: {} for name in augment}
    for name, kwargs in options.items():
        if name not in AUGMENTATIONS:
            raise ValueError(
                f"build_input_pipeline: unknown augmentation {name!r} in augment; choose from {AUGMENTATIONS}."
            )
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValueError(
                f"build_input_pipeline: augment[{name!r}] must be a mapping of keyword arguments, got {kwargs!r}."
            )
    return {name: dict(options[name] or {}) for name in AUGMENTATIONS if name in options}


def _check_keys(element_spec, keys):
    """The keys to keep (all when `keys` is None); errors name a key the dataset does not have."""
    if not isinstance(element_spec, Mapping) or "images" not in element_spec:
        raise ValueError(
            "build_input_pipeline: the dataset must yield example dicts with an 'images' key (as the "
            f"tfvision loaders do), got element_spec {element_spec}."
        )
    if keys is None:
        return None
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    available = set(element_spec) | set(DERIVED_KEYS)
    for key in keys:
        if key not in available:
            raise ValueError(
                f"build_input_pipeline: key {key!r} in keys is not in the dataset; it has {sorted(element_spec)}"
                f" (plus {list(DERIVED_KEYS)} added by resizing)."
            )
    if "images" not in keys:
        raise ValueError(f"build_input_pipeline: keys must include 'images', got {list(keys)}.")
    return keys


def _select(example, keys):
    return example if keys is None else {k: v for k, v in example.items() if k in keys}


def build_input_pipeline(
    dataset: tf.data.Dataset,
    output_size,
    batch_size: int,
    training: bool,
    augment=DEFAULT_AUGMENT,
    shuffle_buffer: int = 128,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    cache: bool | str = False,
    keys=None,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Turns a loader's dataset of example dicts into batches ready for `model.fit` / `evaluate`.

    Training: shuffle, then per example flip -> scale jitter (or resize-and-pad without it) ->
    photometric jitter, as `augment` asks. Evaluation: resize-and-pad only, in order. Both batch and
    prefetch; maps run with `num_parallel_calls=tf.data.AUTOTUNE`.

    Args:
        dataset: unbatched example dicts (`images` [H, W, 3] uint8, boxes `[N, 4]` yxyx pixels, ...), e.g.
            from `tfvision.data.tfds.load_tfds`.
        output_size: int or (height, width), the static image size of every batch.
        batch_size: examples per batch.
        training: shuffle and augment when True.
        augment: augmentations for training, names from `AUGMENTATIONS` ("flip", "scale_jitter",
            "photometric"), or a mapping name -> keyword arguments of the transform (e.g.
            `{"scale_jitter": {"scale_range": (0.8, 1.25)}}`); None or () for none. Ignored when not training.
        shuffle_buffer: size of the shuffle buffer when training; 0 disables shuffling. It holds decoded
            examples (a 640x480 image with its segmentation is ~2 MB, 100 instance masks add 30 MB), so
            it is kept small; shuffle file order in the loader, before decoding, for a wider mix.
        seed: makes shuffling and augmentation reproducible; None for fresh randomness.
        drop_remainder: drop a last, smaller batch; defaults to `training` so that training batches have
            a static batch size (tf.distribute, XLA).
        cache: True to cache the (key-selected, not yet augmented) examples in memory, a path to cache them
            in files there, False not to cache.
        keys: the example keys to keep, e.g. `("images", "boxes", "classes")`; None keeps all. Dropped keys
            are never transformed (masks are the costly ones). `image_scale` is added by resizing.
        deterministic: passed to the parallel map and batch; None keeps tf.data's default (in order).
            Output order, and so reproducibility with a seed, needs it not False.

    Returns:
        A dataset of dicts: images float32 `[B, h, w, 3]` (0..255), boxes `[B, N, 4]`, classes `[B, N]`,
        masks `[B, N, h, w]`, segmentation `[B, h, w]`, image_scale `[B]`, ...; every non-batch dim static.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"build_input_pipeline: batch_size must be a positive int, got {batch_size!r}.")
    transforms.check_output_size(output_size, "build_input_pipeline")
    keys = _check_keys(dataset.element_spec, keys)
    options = _augment_options(augment) if training else {}
    drop_remainder = bool(training) if drop_remainder is None else drop_remainder
    autotune = tf.data.AUTOTUNE

    if keys is not None:
        dataset = dataset.map(lambda example: _select(example, keys))
    if cache:
        dataset = dataset.cache() if cache is True else dataset.cache(str(cache))
    if training and shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    if options:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def prepare(example, example_seed):
            flip_seed, scale_seed, colour_seed = tf.unstack(tf.random.split(example_seed, 3))
            if "flip" in options:
                example = transforms.random_horizontal_flip(example, seed=flip_seed, **options["flip"])
            if "scale_jitter" in options:
                example = transforms.random_scale_crop(
                    example, output_size, seed=scale_seed, **options["scale_jitter"]
                )
            else:
                example = transforms.resize_and_pad(example, output_size)
            if "photometric" in options:
                example = transforms.photometric_jitter(example, seed=colour_seed, **options["photometric"])
            return _select(example, keys)

        dataset = tf.data.Dataset.zip(dataset, seeds)
    else:

        def prepare(example):
            return _select(transforms.resize_and_pad(example, output_size), keys)

    dataset = dataset.map(prepare, num_parallel_calls=autotune, deterministic=deterministic)
    dataset = dataset.batch(
        batch_size, drop_remainder=drop_remainder, num_parallel_calls=autotune, deterministic=deterministic
    )
    return dataset.prefetch(autotune)
