"""The input pipeline: a loader's per-image dataset -> shuffled, augmented, batched, prefetched dicts.

Training draws its randomness from `tf.data.Dataset.random` zipped alongside the data, so the augmentation is
reproducible given `seed` whatever the map's parallelism, and different in every epoch: for flip and scale
jitter, four uniform numbers per example (`geometry_draw_chunks`); for photometric jitter and SSD's
augmentations, a stateless seed per example (`example_seeds`).

Built for small images, where fixed costs, not pixels, dominate (measured on 128-px PNGs: each op run in a
tf.data function costs ~1 us per example, and every map function is optimized by Grappler again each time an
iterator is made, i.e. every epoch, at ~0.1 ms per graph node):
  - `keys` drops what the model does not use before any work is done, and the pipeline turns on tf.data's
    map fusion, so the key selection fuses into the loader's own map and TensorFlow prunes the work whose
    outputs are dropped: a loader's semantic map or masks are then never decoded or drawn.
  - Per example only the pixels are transformed, in one map: flip, scale jitter and padding are one
    geometry (`transforms.scale_crop_geometry`, one random draw), applied as one window cut, one resize and
    one pad (`transforms.transform_pixels`).
  - The boxes, classes and flags follow after `batch()`, vectorised over `[B, N, 4]` with each example's
    geometry (`transforms.transform_objects`), instead of ~50 small ops per example. Instance masks are the
    exception: only the kept ones are resampled, so with masks the objects are done per example.
  - Without random augmentation (evaluation) the per-example map is deterministic and fuses into the
    loader's map too. With it, the draws are zipped beside the examples, and a zip between two maps keeps
    tf.data from fusing them; so on the datasets of tfvision's loaders (`loader_map`) the draws are zipped
    with the loader's index instead, and decoding and augmenting are one map function.
  - When the loader's index knows each image's size before decoding (COCO and VOC folders), the flip and scale
    jitter geometries of `DRAW_CHUNK` examples are computed at once, vectorised, ahead of decoding: run per
    example, the ~30 small ops of a geometry cost ~40 us of CPU per 128-px example (5% of the pipeline).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import tensorflow as tf

from tfvision.data import transforms

# Augmentations by name. Flip and scale jitter are one geometry (the flip mirrors the source window, in
# uint8, before resizing); photometric jitter runs on the resized image. "expand" and "min_iou_crop" are SSD's
# zoom-out and min-IoU random crop (`transforms.ssd_geometry`): with flip they are one geometry too, whose
# window may reach past the image; they replace scale jitter (both choose the window), so not with it.
AUGMENTATIONS = ("flip", "scale_jitter", "photometric", "expand", "min_iou_crop")
# The augmentations that make an SSD geometry.
SSD_AUGMENTATIONS = ("expand", "min_iou_crop")
# Photometric jitter is left out by default: on CPU its HSV round trips on a 512-px image (~6 ms) cost more
# than decoding a 640x480 JPEG and resizing it (~4 ms). Ask for it with augment=AUGMENTATIONS.
DEFAULT_AUGMENT = ("flip", "scale_jitter")
# Keys the pipeline itself adds.
DERIVED_KEYS = ("image_scale",)
# Each example's geometry, carried through batch() to transform the objects after it; never in the output.
_GEOMETRY = "_geometry"
# The augmentations whose randomness is a geometry's draws (`transforms.geometry_draws`); the others draw from
# a per-example seed.
GEOMETRY_AUGMENTATIONS = ("flip", "scale_jitter")
# Examples whose geometry draws are one chunk: one [DRAW_CHUNK, 4] draw, and, when the image sizes are known
# before decoding, one vectorised geometry computation.
DRAW_CHUNK = 64
# The datasets made by `loader_map`: dataset -> (index, to_example, image_size).
_LOADER_MAPS = weakref.WeakKeyDictionary()


def loader_map(index: tf.data.Dataset, to_example, image_size=None) -> tf.data.Dataset:
    """`index.map(to_example)`, in parallel: how tfvision's loaders decode their index rows into examples.

    The parts are remembered, so that `build_input_pipeline` can decode and augment each example in one map
    function when it trains on this dataset: its random draws are zipped with the index instead of with the
    decoded examples, since a zip between two maps keeps tf.data from fusing them (the fusion alone, measured
    by `bench/data_pipeline.py` on 128-px PNGs with flip and scale jitter: 0.76-0.81 of the bare baseline's
    images/s, against 0.69-0.77 with the zip after decoding).

    Args:
        index: the loader's rows (paths, sizes, padded objects, ...).
        to_example: row -> example dict (reads and decodes).
        image_size: when the rows know their image's (height, width) before decoding, a function of one row
            or a batch of rows that gives it (int32 `[..., 2]`): the pipeline then computes the geometries of
            `DRAW_CHUNK` examples at once, ahead of decoding. The rows are batched for that, so each component
            must have the same shape in every row, or be ragged.
    """
    dataset = index.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    _LOADER_MAPS[dataset] = (index, to_example, image_size)
    return dataset


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


def fusion_options() -> tf.data.Options:
    """Turns on map fusion: consecutive parallel maps become one (one function call and one hand-over
    between threads per example instead of several), and work whose outputs the later map drops is pruned."""
    options = tf.data.Options()
    options.experimental_optimization.map_fusion = True
    return options


def example_seeds(seed=None, rerandomize_each_iteration: bool = True) -> tf.data.Dataset:
    """An endless dataset of stateless-op seeds (int64 `[2]`) to zip beside examples or batches: the draws
    are reproducible given `seed` whatever a map's parallelism, and new every epoch unless
    `rerandomize_each_iteration` is False."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize_each_iteration).batch(
        2, drop_remainder=True
    )


def geometry_draw_chunks(seed=None) -> tf.data.Dataset:
    """An endless dataset of float32 `[DRAW_CHUNK, 4]` geometry draws (`transforms.geometry_draws` of each seed
    of `example_seeds(seed)`): example k of an epoch gets row k % DRAW_CHUNK of chunk k // DRAW_CHUNK."""
    return example_seeds(seed).map(lambda chunk_seed: transforms.geometry_draws(chunk_seed, DRAW_CHUNK))


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

    Each example gets `transforms.scale_crop_geometry(size, output_size, draws=d, flip_probability=p)`
    (or `resize_geometry`, plus `random_flip_geometry(draws=d)` for a flip without scale jitter), where d
    is its row of `geometry_draw_chunks(seed)` (with photometric jitter, `transforms.geometry_draws` of its
    seed); the output is, bit for bit, `transform_objects(transform_pixels(example, geometry))` batched:
    the same as `random_scale_crop` / `resize_and_pad`, and a flip is `random_horizontal_flip` before them
    with the window mirrored. Boxes are transformed after batching (per example when there are masks).

    Args:
        dataset: unbatched example dicts (`images` [H, W, 3] uint8, boxes `[N, 4]` yxyx pixels, ...), e.g.
            from `tfvision.data.tfds.load_tfds`.
        output_size: int or (height, width), the static image size of every batch.
        batch_size: examples per batch.
        training: shuffle and augment when True.
        augment: augmentations for training, names from `AUGMENTATIONS` ("flip", "scale_jitter",
            "photometric", "expand", "min_iou_crop"), or a mapping name -> keyword arguments of the transform
            (e.g. `{"scale_jitter": {"scale_range": (0.8, 1.25)}}`; "expand" takes those of
            `transforms.expand_window` plus `fill`, "min_iou_crop" those of `transforms.min_iou_crop_window`);
            None or () for none. Ignored when not training. "expand" / "min_iou_crop" (SSD's) exclude
            "scale_jitter"; with them a geometry from `transforms.ssd_geometry` replaces the scale-crop one, and
            objects whose centres leave the crop are dropped.
        shuffle_buffer: size of the shuffle buffer when training; 0 disables shuffling. It holds decoded
            examples (a 640x480 image with its segmentation is ~2 MB, 100 instance masks add 30 MB), so
            it is kept small; shuffle file order in the loader, before decoding, for a wider mix. (On a
            tfvision loader's dataset, augmented and not cached, it shuffles the rows the loader maps instead,
            in the same order: for the COCO and VOC folders, paths and boxes rather than decoded images.)
        seed: makes shuffling and augmentation reproducible; None for fresh randomness.
        drop_remainder: drop a last, smaller batch; defaults to `training` so that training batches have
            a static batch size (tf.distribute, XLA).
        cache: True to cache the (key-selected, not yet augmented) examples in memory, a path to cache them
            in files there, False not to cache. Later epochs then skip reading and decoding, but also replay
            the first epoch's file order, so training shuffles the whole cached set every epoch (a buffer
            of the data set's size, when it is known, instead of `shuffle_buffer`). In memory, the decoded
            images must fit: 8,000 128-px images take 0.4 GB, COCO's train split at 640x480 about 100 GB.
        keys: the example keys to keep, e.g. `("images", "boxes", "classes")`; None keeps all. Dropped keys
            are never transformed (masks are the costly ones), nor, for tfvision's loaders, decoded.
            `image_scale` is added by resizing.
        deterministic: passed to the parallel maps; None keeps tf.data's default (in order).
            Output order, and so reproducibility with a seed, needs it not False.

    Returns:
        A dataset of dicts: images float32 `[B, h, w, 3]` (0..255), boxes `[B, N, 4]`, classes `[B, N]`,
        masks `[B, N, h, w]`, segmentation `[B, h, w]`, image_scale `[B]`, ...; every non-batch dim static.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"build_input_pipeline: batch_size must be a positive int, got {batch_size!r}.")
    output_size = transforms.check_output_size(output_size, "build_input_pipeline")
    keys = _check_keys(dataset.element_spec, keys)
    options = _augment_options(augment) if training else {}
    drop_remainder = bool(training) if drop_remainder is None else drop_remainder
    autotune = tf.data.AUTOTUNE

    spec = _select(dataset.element_spec, keys)
    # Random augmentation of a `loader_map` dataset (not cached: a cache holds decoded examples): decoding
    # joins `prepare`'s map, and the index is shuffled and zipped with the draws instead of the decoded
    # examples (see `loader_map`). The same examples, draws and order as the other way.
    loader_parts = _LOADER_MAPS.get(dataset) if options and not cache else None
    to_example = image_size = None
    if loader_parts is not None:
        dataset, to_example, image_size = loader_parts
    elif keys is not None:
        # Parallel, like the loaders' maps, so that map fusion can merge the two.
        dataset = dataset.map(lambda example: _select(example, keys), num_parallel_calls=autotune)
    if cache:
        dataset = dataset.cache() if cache is True else dataset.cache(str(cache))
        size = int(dataset.cardinality())  # < 0 when infinite or unknown
        if training and shuffle_buffer and size > 0:
            shuffle_buffer = max(shuffle_buffer, size)
    if training and shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    # Objects are transformed after batching unless there are masks (resampled per example, kept ones only).
    batch_objects = "masks" not in spec and any(k in spec for k in transforms.PER_BOX_PADDING)
    scale_kwargs = dict(options.get("scale_jitter", {}))
    min_box_area = scale_kwargs.pop("min_box_area", 1.0) if "scale_jitter" in options else 0.0
    flip_probability = options["flip"].get("probability", 0.5) if "flip" in options else 0.0
    if set(options.get("flip", {})) - {"probability"}:
        raise ValueError(
            f"build_input_pipeline: augment['flip'] takes only 'probability', got {sorted(options['flip'])}."
        )
    ssd = any(name in options for name in SSD_AUGMENTATIONS)
    geometric = any(name in options for name in GEOMETRY_AUGMENTATIONS)
    # Flip and scale jitter alone draw from `geometry_draw_chunks`; with the others, from per-example seeds.
    by_draws = geometric and set(options) <= set(GEOMETRY_AUGMENTATIONS)
    if ssd and "scale_jitter" in options:
        raise ValueError(
            "build_input_pipeline: augment asks for scale_jitter and SSD's expand / min_iou_crop, which both choose "
            "the image window; use one or the other."
        )
    expand_kwargs = dict(options.get("expand", {}))
    fill = expand_kwargs.pop("fill", transforms.MEAN_PIXEL)
    transform_objects = transforms.transform_canvas_objects if ssd else transforms.transform_objects
    keep = None if keys is None else tuple(keys) + (_GEOMETRY,)

    def draw_geometry(sizes, draws):
        """The flip and scale jitter geometry of one example (sizes `[2]`, draws `[4]`) or of a chunk of them
        (`[B, 2]`, `[B, 4]`): flip, jitter and window from one draw (the cheapest graph; see transforms)."""
        if "scale_jitter" in options:
            return transforms.scale_crop_geometry(
                sizes, output_size, draws=draws, flip_probability=flip_probability, **scale_kwargs
            )
        return transforms.random_flip_geometry(
            transforms.resize_geometry(sizes, output_size), flip_probability, draws=draws
        )

    def draw_ahead(rows, draws):
        """The geometries of a chunk of index rows, before decoding."""
        sizes = image_size(rows)
        return draw_geometry(sizes, draws[: tf.shape(sizes)[0]])

    def prepare(example, randomness=None):
        """One example, decoded if it is an index row, with its pixels transformed. `randomness`: none
        (no augmentation), its geometry (drawn ahead), its geometry draws, or its seed."""
        if to_example is not None:
            example = _select(to_example(example), keys)
        if options and not by_draws:
            geometry_seed = randomness
            if "photometric" in options:
                geometry_seed, colour_seed = tf.unstack(tf.random.split(randomness, 2))
        if ssd:
            geometry = transforms.ssd_geometry(
                example, output_size, expand=expand_kwargs if "expand" in options else None,
                min_iou_crop=options.get("min_iou_crop"), flip_probability=flip_probability, seed=geometry_seed,
            )
        elif isinstance(randomness, Mapping):
            geometry = randomness
        elif geometric:
            draws = randomness if by_draws else transforms.geometry_draws(geometry_seed)
            geometry = draw_geometry(tf.shape(example["images"])[:2], draws)
        else:
            geometry = transforms.resize_geometry(tf.shape(example["images"])[:2], output_size)
        if ssd:
            example = transforms.transform_canvas_pixels(example, geometry, output_size, fill)
        else:
            example = transforms.transform_pixels(example, geometry, output_size)
        if "photometric" in options:
            example = transforms.photometric_jitter(example, seed=colour_seed, **options["photometric"])
        if batch_objects:
            example[_GEOMETRY] = {k: v for k, v in geometry.items() if k != "scale"}  # the objects need no scale
        else:
            example = transform_objects(example, geometry, output_size, min_box_area)
        return _select(example, keep)

    def finish(batch):
        batch = dict(batch)
        geometry = batch.pop(_GEOMETRY)
        return transform_objects(batch, geometry, output_size, min_box_area)

    if by_draws and image_size is not None:
        # Geometries drawn ahead, a chunk of rows at a time (unbatch() gives back rows of the same spec).
        count = int(dataset.cardinality())
        dataset = tf.data.Dataset.zip(dataset.batch(DRAW_CHUNK), geometry_draw_chunks(seed))
        dataset = dataset.map(
            lambda rows, draws: (rows, draw_ahead(rows, draws)), num_parallel_calls=autotune,
            deterministic=deterministic,
        ).unbatch()
        if count >= 0:
            # unbatch() loses the count, which `model.fit` and the trainer's schedules read.
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    elif by_draws:
        dataset = tf.data.Dataset.zip(dataset, geometry_draw_chunks(seed).unbatch())
    elif options:
        dataset = tf.data.Dataset.zip(dataset, example_seeds(seed))
    # Without random augmentation `prepare` is deterministic and fuses into the loader's map.
    dataset = dataset.map(prepare, num_parallel_calls=autotune, deterministic=deterministic)
    # A plain batch() right after the map: tf.data fuses the two (map_and_batch_fusion), so each example's
    # result is written straight into its batch by the map's worker threads.
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if batch_objects:
        dataset = dataset.map(finish, num_parallel_calls=autotune, deterministic=deterministic)
    return dataset.prefetch(autotune).with_options(fusion_options())
