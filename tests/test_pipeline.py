"""Tests for tfvision.data.pipeline.build_input_pipeline: batch structure and static shapes, agreement with
the per-example transforms, reproducibility, key selection, and objects that stay on their pixels."""

import numpy as np
import pytest
import tensorflow as tf

from tfvision.data import coco, synthetic, transforms
from tfvision.data import pipeline as pipeline_module
from tfvision.data.pipeline import DRAW_CHUNK, build_input_pipeline

N = 4
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
SIZES = [(40, 56), (48, 36), (32, 32), (50, 64), (36, 44)]


def example_arrays(index, height, width, n_objects):
    """One example as NumPy arrays: `n_objects` coloured rectangles (object k: colour k, class k + 1)."""
    image = np.full((height, width, 3), 40, np.uint8)
    boxes = np.zeros((N, 4), np.float32)
    classes = np.full(N, -1, np.int32)
    masks = np.zeros((N, height, width), np.uint8)
    seg = np.zeros((height, width), np.int32)
    for k in range(n_objects):
        # Disjoint rectangles on a diagonal, a quarter of the image each.
        y0, x0 = 1 + k * (height // 4 + 1), 1 + k * (width // 4 + 1)
        y1, x1 = y0 + height // 4, x0 + width // 4
        image[y0:y1, x0:x1] = COLOURS[k]
        boxes[k] = (y0, x0, y1, x1)
        classes[k] = k + 1
        masks[k, y0:y1, x0:x1] = 1
        seg[y0:y1, x0:x1] = k + 1
    return {
        "images": image,
        "boxes": boxes,
        "classes": classes,
        "is_crowd": np.arange(N) == 1,
        "difficult": np.zeros(N, bool),
        "masks": masks,
        "segmentation": seg,
        "image_id": np.int64(index),
        "original_size": np.array([height, width], np.int32),
    }


SIGNATURE = {
    "images": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([N, 4], tf.float32),
    "classes": tf.TensorSpec([N], tf.int32),
    "is_crowd": tf.TensorSpec([N], tf.bool),
    "difficult": tf.TensorSpec([N], tf.bool),
    "masks": tf.TensorSpec([N, None, None], tf.uint8),
    "segmentation": tf.TensorSpec([None, None], tf.int32),
    "image_id": tf.TensorSpec([], tf.int64),
    "original_size": tf.TensorSpec([2], tf.int32),
}


def make_dataset(n_objects=(3, 2, 0, 3, 1)):
    examples = [example_arrays(i, h, w, n) for i, ((h, w), n) in enumerate(zip(SIZES, n_objects))]
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=SIGNATURE), examples


def batches(dataset):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_eval_pipeline_equals_resize_and_pad_batched():
    dataset, examples = make_dataset()
    out = batches(build_input_pipeline(dataset, 64, 2, training=False))
    assert [len(b["images"]) for b in out] == [2, 2, 1]  # eval keeps the remainder, in order
    expected = [
        {k: v.numpy() for k, v in transforms.resize_and_pad({k: tf.constant(v) for k, v in e.items()}, 64).items()}
        for e in examples
    ]
    flat = [{k: b[k][i] for k in b} for b in out for i in range(len(b["images"]))]
    for got, want in zip(flat, expected):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal([f["image_id"] for f in flat], [0, 1, 2, 3, 4])


def test_element_spec_is_static():
    dataset, _ = make_dataset()
    train = build_input_pipeline(dataset, (48, 64), 2, training=True, seed=0).element_spec
    evaluate = build_input_pipeline(dataset, (48, 64), 2, training=False).element_spec
    for spec, batch in ((train, 2), (evaluate, None)):
        assert spec["images"].shape.as_list() == [batch, 48, 64, 3] and spec["images"].dtype == tf.float32
        assert spec["boxes"].shape.as_list() == [batch, N, 4]
        assert spec["classes"].shape.as_list() == [batch, N]
        assert spec["masks"].shape.as_list() == [batch, N, 48, 64]
        assert spec["segmentation"].shape.as_list() == [batch, 48, 64]
        assert spec["image_scale"].shape.as_list() == [batch]
        assert spec["image_id"].shape.as_list() == [batch]


def test_training_drops_remainder_and_keeps_objects_on_pixels():
    dataset, _ = make_dataset()
    out = batches(build_input_pipeline(dataset, 48, 2, training=True, seed=5))
    assert [len(b["images"]) for b in out] == [2, 2]
    checked = 0
    for batch in out:
        for i in range(2):
            valid = batch["classes"][i] >= 0
            n_valid = int(valid.sum())
            assert valid[:n_valid].all()  # compacted: valid first, padding after
            np.testing.assert_array_equal(batch["boxes"][i][n_valid:], 0.0)
            np.testing.assert_array_equal(batch["masks"][i][n_valid:], 0)
            for j in range(n_valid):
                k = int(batch["classes"][i, j]) - 1
                image, box = batch["images"][i], batch["boxes"][i, j]
                # Flip, crop and resize moved image, box, mask and segmentation with the same draw.
                np.testing.assert_array_equal(batch["masks"][i, j] == 1, batch["segmentation"][i] == k + 1)
                if min(box[2] - box[0], box[3] - box[1]) >= 2:
                    region = (image[..., k] > 127.5) & (np.delete(image, k, axis=-1).max(-1) < 127.5)
                    ys, xs = np.nonzero(region)
                    np.testing.assert_allclose([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], box, atol=1.0)
                    checked += 1
    assert checked >= 3


def test_same_seed_same_batches_and_new_draws_each_epoch():
    dataset = make_dataset()[0].repeat(4)  # 20 examples: 20 flips cannot agree by chance
    augment = ("flip", "scale_jitter", "photometric")
    run = batches(build_input_pipeline(dataset, 40, 2, training=True, augment=augment, seed=3))
    assert_same(run, batches(build_input_pipeline(dataset, 40, 2, training=True, augment=augment, seed=3)))
    other = batches(build_input_pipeline(dataset, 40, 2, training=True, augment=augment, seed=4))
    assert any(not np.array_equal(a["images"], b["images"]) for a, b in zip(run, other))
    for batch in run:
        assert batch["images"].min() >= 0.0 and batch["images"].max() <= 255.0
    # Without shuffling, only fresh augmentation draws can make a second epoch differ from the first.
    unshuffled = build_input_pipeline(dataset, 40, 2, training=True, augment=augment, shuffle_buffer=0, seed=3)
    epoch_one, epoch_two = batches(unshuffled), batches(unshuffled)
    np.testing.assert_array_equal([b["image_id"] for b in epoch_one], [b["image_id"] for b in epoch_two])
    assert all(not np.array_equal(a["images"], b["images"]) for a, b in zip(epoch_one, epoch_two))


def test_keys_select_what_survives():
    dataset, _ = make_dataset()
    out = build_input_pipeline(dataset, 32, 2, training=True, seed=1, keys=("images", "boxes", "classes"))
    assert set(out.element_spec) == {"images", "boxes", "classes"}
    ev = build_input_pipeline(dataset, 32, 2, training=False, keys=["images", "image_scale", "image_id"])
    assert set(ev.element_spec) == {"images", "image_scale", "image_id"}
    first = next(iter(ev))
    np.testing.assert_allclose(first["image_scale"].numpy(), [min(32 / 40, 32 / 56), min(32 / 48, 32 / 36)])
    with pytest.raises(ValueError, match="'mask'"):
        build_input_pipeline(dataset, 32, 2, training=False, keys=("images", "mask"))
    with pytest.raises(ValueError, match="'images'"):
        build_input_pipeline(dataset, 32, 2, training=False, keys=("boxes",))


def test_zero_object_examples_give_all_padding_targets():
    dataset, _ = make_dataset(n_objects=(0, 0, 0, 0, 0))
    for training in (True, False):
        for batch in batches(build_input_pipeline(dataset, 32, 2, training=training, seed=2)):
            np.testing.assert_array_equal(batch["classes"], -1)
            np.testing.assert_array_equal(batch["boxes"], 0.0)
            np.testing.assert_array_equal(batch["masks"], 0)
            assert not batch["is_crowd"].any()
            assert batch["images"].shape[1:] == (32, 32, 3)


def test_augment_options_and_errors():
    dataset, _ = make_dataset()
    # No augmentation and no shuffling: training gives the eval output, minus the remainder.
    plain = batches(build_input_pipeline(dataset, 40, 2, training=True, augment=(), shuffle_buffer=0))
    assert_same(plain, batches(build_input_pipeline(dataset, 40, 2, training=False))[:2])
    # Keyword arguments reach the transform: a fixed scale of 1 always zooms to fit, like resize_and_pad.
    fixed = build_input_pipeline(
        dataset, 40, 5, training=True, augment={"scale_jitter": {"scale_range": (1.0, 1.0)}}, seed=0
    )
    scales = sorted(next(iter(fixed))["image_scale"].numpy().tolist())
    np.testing.assert_allclose(scales, sorted(min(40 / h, 40 / w) for h, w in SIZES), rtol=1e-6)
    with pytest.raises(ValueError, match="'rotate'"):
        build_input_pipeline(dataset, 40, 2, training=True, augment=("flip", "rotate"))
    with pytest.raises(ValueError, match="batch_size"):
        build_input_pipeline(dataset, 40, 0, training=False)
    with pytest.raises(ValueError, match="output_size"):
        build_input_pipeline(dataset, (40,), 2, training=False)
    with pytest.raises(ValueError, match="images"):
        build_input_pipeline(tf.data.Dataset.range(3), 40, 2, training=False)


@pytest.mark.parametrize("in_files", [False, True])
def test_cache(tmp_path, in_files):
    dataset, _ = make_dataset()
    cache = str(tmp_path / "cache") if in_files else True
    pipeline = build_input_pipeline(dataset, 32, 2, training=False, cache=cache, keys=("images", "boxes"))
    assert_same(batches(pipeline), batches(pipeline))
    if in_files:
        assert any(p.name.startswith("cache") for p in tmp_path.iterdir())


def test_cached_training_shuffles_the_whole_set_every_epoch():
    # The cache replays the first epoch's order, so a small shuffle buffer would leave each example near its
    # cached position; with the cache, training shuffles over the whole set instead.
    count = 64
    dataset = tf.data.Dataset.from_tensor_slices(
        {"images": np.zeros((count, 8, 8, 3), np.uint8), "image_id": np.arange(count, dtype=np.int64)}
    )
    pipeline = build_input_pipeline(dataset, 8, 4, training=True, augment=(), shuffle_buffer=2, seed=3, cache=True)
    epochs = [np.concatenate([batch["image_id"].numpy() for batch in pipeline]) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(count))  # each example once per epoch
        # A buffer of 2 moves an example at most a few places forward; the whole-set shuffle moves them far.
        assert np.abs(order - np.arange(count)).max() > count // 2
    assert len({tuple(order) for order in epochs}) == 3  # a new order every epoch


def per_example_reference(examples, size, seed, flip_probability=0.5, scale_range=(0.5, 2.0)):
    """What the training pipeline (shuffle_buffer=0) promises for each example, from the per-example
    transforms: the geometry from its draws (example k: row k of the geometry draws of the first seed of
    Dataset.random(seed)), applied in full. Returns (examples as NumPy dicts, whether each was flipped)."""
    assert len(examples) <= DRAW_CHUNK  # all in the first chunk of draws
    first_seed = next(iter(tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)))
    draws = transforms.geometry_draws(first_seed, DRAW_CHUNK)
    out, flips = [], []
    for example, example_draws in zip(examples, draws):
        example = {k: tf.constant(v) for k, v in example.items()}
        geometry = transforms.scale_crop_geometry(tf.shape(example["images"])[:2], size, scale_range,
                                                  flip_probability=flip_probability, draws=example_draws)
        out.append(to_numpy(transforms.transform_objects(transforms.transform_pixels(example, geometry, size),
                                                         geometry, size, min_box_area=1.0)))
        flips.append(bool(geometry["flip"]))
    return out, flips


def to_numpy(example):
    return {k: v.numpy() for k, v in example.items()}


def test_training_batches_equal_the_per_example_transforms():
    dataset, examples = make_dataset()
    want, flips = per_example_reference(examples, 40, seed=7)
    assert set(flips) == {False, True}  # both kinds of example are checked
    # Without masks the boxes are transformed after batching; with masks, per example. Both must agree
    # with the per-example transforms bit for bit.
    for keys in (("images", "boxes", "classes", "is_crowd", "difficult", "segmentation", "image_scale"), None):
        out = batches(build_input_pipeline(dataset, 40, 5, training=True, shuffle_buffer=0, seed=7, keys=keys))
        assert len(out) == 1
        for i, reference in enumerate(want):
            for key in out[0]:
                np.testing.assert_array_equal(out[0][key][i], reference[key], err_msg=f"{key}, example {i}")


def test_eval_without_masks_equals_resize_and_pad():
    dataset, examples = make_dataset()
    keys = ("images", "boxes", "classes", "is_crowd", "image_scale", "image_id")
    out = batches(build_input_pipeline(dataset, 48, 2, training=False, keys=keys))
    flat = [{k: b[k][i] for k in b} for b in out for i in range(len(b["images"]))]
    assert len(flat) == len(examples)
    for got, example in zip(flat, examples):
        want = to_numpy(transforms.resize_and_pad({k: tf.constant(v) for k, v in example.items()}, 48))
        for key in keys:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_flip_options_are_checked():
    dataset, _ = make_dataset()
    never = batches(build_input_pipeline(dataset, 40, 5, training=True, augment={"flip": {"probability": 0.0}},
                                         shuffle_buffer=0, seed=0))
    plain = batches(build_input_pipeline(dataset, 40, 5, training=True, augment=(), shuffle_buffer=0))
    assert_same(never, plain)
    with pytest.raises(ValueError, match="probability"):
        build_input_pipeline(dataset, 40, 2, training=True, augment={"flip": {"p": 0.3}})


def test_loader_does_no_work_for_dropped_keys(tmp_path, monkeypatch):
    """With map fusion the key selection joins the COCO loader's map, and its semantic map (drawn in NumPy
    from the annotations' masks) is neither decoded nor drawn unless `segmentation` is kept."""
    calls = []
    draw = coco._masks_and_semantic

    def counting(*args, **kwargs):
        calls.append(1)
        return draw(*args, **kwargs)

    monkeypatch.setattr(coco, "_masks_and_semantic", counting)
    root = synthetic.make_shapes(tmp_path / "shapes", 6, 1, 32, seed=0, progress=False)
    # semantic_dir=None: draw the semantic map from the annotations rather than read the class-map PNGs.
    dataset, _ = coco.load_coco_folder(root, "train", max_instances=8, semantic_dir=None)
    for keys, expected_calls in ((("images", "boxes", "classes"), 0), (("images", "segmentation"), 6)):
        calls.clear()
        for training in (True, False):
            for batch in build_input_pipeline(dataset, 32, 2, training=training, seed=0, keys=keys):
                assert set(batch) == set(keys)
        assert len(calls) == 2 * expected_calls, keys


def parallel_maps(dataset):
    """How many parallel map stages the dataset's graph has (before tf.data's own optimizations)."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    return sum(node.op == "ParallelMapDatasetV2" for node in graph.node)


@pytest.mark.parametrize("include_masks", [False, True])
def test_training_on_a_loader_decodes_and_augments_in_one_map(tmp_path, monkeypatch, include_masks):
    """On a loader's own dataset, training decodes and augments in one map (the draws zipped with the loader's
    index, the geometries drawn ahead for chunks of rows, as the COCO index knows the image sizes), with the
    same batches, in the same shuffled order, as on a dataset the pipeline cannot look into. Chunks of 4 draws
    for 6 examples: a full chunk and a partial one."""
    monkeypatch.setattr(pipeline_module, "DRAW_CHUNK", 4)  # the VOC loader's test runs the default 64
    root = synthetic.make_shapes(tmp_path / "shapes", 6, 1, 32, seed=0, progress=False)
    dataset, _ = coco.load_coco_folder(root, "train", max_instances=8, include_masks=include_masks,
                                       semantic_dir=None)
    opaque = dataset.map(lambda example: example, num_parallel_calls=tf.data.AUTOTUNE)  # not the loader's
    for keys in (None, ("images", "boxes", "classes")):
        def pipeline(examples):
            return build_input_pipeline(examples, 32, 2, training=True, seed=5, shuffle_buffer=4, keys=keys)

        fused, other = pipeline(dataset), pipeline(opaque)
        assert int(fused.cardinality()) == int(other.cardinality()) == 3  # known, for model.fit and schedules
        # Geometries of a chunk, decode + augment, and the objects' transform after batch() (per example when
        # masks are kept) ...
        assert parallel_maps(fused) == 2 + (keys is not None or not include_masks)
        # ... against decode, identity, key selection, augment (with its geometry), objects.
        assert parallel_maps(other) == parallel_maps(fused) + 1 + (keys is not None)
        for _ in range(2):  # new draws and a new order every epoch, the same for both
            assert_same(batches(fused), batches(other))
