"""SavedModel export: the TF Serving contract (signatures, assets, versioned folders written atomically).

An export is `<export_root>/<experiment>/<version>/`, a SavedModel with two signatures that a fresh
`import tensorflow` process (no tfvision, no Keras, no custom objects) or TF Serving can call:

- `serving_default`: input `images` uint8 `[batch, height, width, 3]`, any size (one size per batch);
- `serving_bytes`: input `image_bytes` string `[batch]`, JPEG or PNG, decoded in the graph;

and the label map as the asset `assets/labels.txt` (line k+1 names contiguous id k, background first).
Both signatures resize and pad in the graph exactly as training did
(`tfvision.data.transforms.resize_and_pad`: aspect-preserving bilinear resize of the longer side to the
model's input size, zero padding at the bottom/right), and map the model's outputs back to each input
image. Every output is batch-major.

Detectors on external region proposals (R-CNN, Fast R-CNN: models with `takes_proposals`) take the proposals
as a second input of both signatures, computed by the client, since selective search (OpenCV) cannot run in a
graph: `proposals` float32 `[batch, P, 4]` (P >= 1, any), `[ymin, xmin, ymax, xmax]` normalized to each
input image (the convention of `detection_boxes`; values past 1 reach into the padding). Their exports
carry `assets/proposals.json`, the selective-search settings training used, so that a client computes the
same proposals (`tfvision.predict.export_proposals`; see `RegionDetectionServingModule`).

How it is built, and why: a `tf.Module` holds the serving `tf.function`s, the `tf.Variable`s they read and
the assets, and is written with `tf.saved_model.save(..., signatures=...)`. The Keras model itself is
kept out of the SavedModel's object graph, as `keras.export.ExportArchive` does: a plain TensorFlow loader
cannot revive Keras objects anyway, and leaving them out keeps the export small and spares the saver from
walking every layer's functions. ExportArchive was not used because it offers no public way to attach an
asset, and its endpoints are traced with autograph off.

Task-specific parts are subclasses of `ServingModule` that supply `postprocess` and `output_names`
(`SegmentationServingModule`, `DetectionServingModule`, `RegionDetectionServingModule`), and optionally
`extra_assets` and `verification_inputs`; `export_serving_module` does the version numbering, the atomic
write and the reload check for any of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfvision.export.serving import LABELS_ASSET
from tfvision.models.xla_convolutions import plain_convolutions

TMP_PREFIX = ".tmp-"
SIGNATURES = ("serving_default", "serving_bytes")
PROPOSALS_ASSET = "proposals.json"  # selective-search settings of exports that take proposals


# --- Image geometry shared by every task ---


def _input_size(input_size) -> tuple[int, int]:
    """`input_size` (int or (height, width)) as a pair of positive Python ints."""
    size = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(
            f"input_size must be a positive int or (height, width) of positive ints, got {input_size!r}; "
            "give the fixed size the model was trained at."
        )
    return int(size[0]), int(size[1])


def fit_size(image_size, input_size) -> tf.Tensor:
    """The size an image is resized to so that it fits `input_size` with its aspect ratio kept.

    Same arithmetic as `tfvision.data.transforms.resize_and_pad`: scale = min(S_h / h, S_w / w), each side
    round(side * scale) pixels, at least 1 and at most the input size.

    Args:
        image_size: int32 `[2]`, (height, width) of the image.
        input_size: static (height, width) of the model's input.

    Returns:
        int32 `[2]`, (resized height, resized width).
    """
    height, width = input_size
    size = tf.cast(image_size, tf.float32)
    scale = tf.minimum(height / size[0], width / size[1])
    return tf.clip_by_value(tf.cast(tf.round(size * scale), tf.int32), 1, [height, width])


def resize_and_pad_images(images, input_size):
    """Resizes a batch of same-size images to fit `input_size` and pads it bottom/right with zeros.

    Args:
        images: float32 `[B, H, W, 3]`, pixel values 0..255.
        input_size: static (height, width) of the model's input.

    Returns:
        (float32 `[B, height, width, 3]` in 0..255, int32 `[2]` the resized (valid) size inside it).
    """
    height, width = input_size
    resized = fit_size(tf.shape(images)[1:3], input_size)
    # Bilinear, half-pixel centres, no antialiasing: what training's resize_and_pad does.
    images = tf.image.resize(images, resized, method="bilinear")
    images = tf.pad(images, [[0, 0], [0, height - resized[0]], [0, width - resized[1]], [0, 0]])
    return tf.ensure_shape(images, [None, height, width, 3]), resized


# --- Serving modules ---


class _ModelRef:
    """Holds the Keras model outside the SavedModel object graph (a plain object is not tracked)."""

    def __init__(self, model):
        self.model = model


class ServingModule(tf.Module):
    """The task-independent half of an export: input signatures, decoding, resize/pad, label asset.

    A subclass supplies `output_names` and `postprocess(outputs, image_size, resized_size)`, which turns the
    model's raw outputs for the padded batch into the signature's outputs for the original images; it may
    add assets (`extra_assets`) and must then make `verification_inputs` fit its signatures. Subclasses with
    other signature inputs reuse `_images_input` / `_bytes_input`, which check and decode the images.

    Args:
        model: Keras model taking float32 `[B, S_h, S_w, 3]` images, pixel values 0..255.
        input_size: int or (height, width), the fixed size the model was trained at.
    """

    output_names: tuple[str, ...] = ()

    def __init__(self, model: keras.Model, input_size):
        super().__init__(name=None)
        self.input_size = _input_size(input_size)
        self._model_ref = _ModelRef(model)
        self.label_file = None  # set to a tf.saved_model.Asset by export_serving_module
        self.extra_asset_files = {}  # file name -> tf.saved_model.Asset, set by export_serving_module
        self.graph_variables = []  # set by trace()

    def postprocess(self, outputs, image_size, resized_size) -> dict:
        """The signature's outputs, from the model's outputs for the padded batch.

        Args:
            outputs: what the model returns for float32 `[B, S_h, S_w, 3]`.
            image_size: int32 `[2]`, (H, W) of the request's images.
            resized_size: int32 `[2]`, the top-left part of the S_h x S_w input that the image covers
                (the rest is padding); pixel coordinates there / resized_size * (H, W) are image pixels.

        Returns:
            `output_names` -> batch-major tensors.
        """
        raise NotImplementedError

    def extra_assets(self) -> dict[str, str]:
        """Asset files besides `labels.txt` that clients need: file name in `assets/` -> text. None here."""
        return {}

    def verification_inputs(self) -> dict:
        """The tiny request `_verify_export` sends: signature name -> {input name: tensor}, batch-major."""
        return _check_inputs()

    def _run(self, padded, image_size, resized_size) -> dict:
        outputs = self._model_ref.model(padded, training=False)
        return self.postprocess(outputs, image_size, resized_size)

    def _images_input(self, images, where: str):
        """Checks a `serving_default` image batch and resizes and pads it to the model's input.

        TF Serving does not check a request against the signature's shape, so the graph does.

        Args:
            images: uint8 `[B, H, W, 3]`, one size per batch (as sent: the rank is checked here).
            where: the signature's name, for error messages.

        Returns:
            (padded float32 `[B, S_h, S_w, 3]` in 0..255, image_size int32 `[2]` the request's (H, W),
            resized_size int32 `[2]` the part of the input the images cover).
        """
        shape = tf.shape(images)
        checks = [
            tf.debugging.assert_equal(
                shape[-1],
                3,
                message=f"{where}: `images` must be uint8 [batch, height, width, 3] (RGB); channels",
            ),
            tf.debugging.assert_positive(
                shape[:3],
                message=f"{where}: `images` needs at least one image, of height and width >= 1",
            ),
        ]
        with tf.control_dependencies(checks):
            # EnsureShape checks the rank at run time; tf.rank / assert_rank would fold to a constant here.
            images = tf.ensure_shape(
                images, [None, None, None, 3], name="images_must_be_batch_height_width_3"
            )
        images = tf.cast(images, tf.float32)
        padded, resized = resize_and_pad_images(images, self.input_size)
        return padded, tf.shape(images)[1:3], resized

    def _bytes_input(self, image_bytes, where: str):
        """Checks and decodes a `serving_bytes` batch of encoded images, resized and padded to the input.

        Each image is decoded and resized inside a map, so the model then runs once on the whole batch. The
        outputs are dense arrays at the input size, so every image of one request must have the same height
        and width; a request that mixes sizes fails with a message that says so.

        Args:
            image_bytes: string `[B]`, JPEG or PNG.
            where: the signature's name, for error messages.

        Returns:
            (padded float32 `[B, S_h, S_w, 3]`, image_size int32 `[2]`, resized_size int32 `[2]`), as
            `_images_input`.
        """
        height, width = self.input_size
        nonempty = tf.debugging.assert_positive(
            tf.size(image_bytes), message=f"{where}: `image_bytes` needs at least one image"
        )
        with tf.control_dependencies([nonempty]):
            image_bytes = tf.ensure_shape(image_bytes, [None], name="image_bytes_must_be_batch")

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            padded, _ = resize_and_pad_images(tf.cast(image, tf.float32)[tf.newaxis], self.input_size)
            return padded[0], tf.shape(image)[:2]

        padded, sizes = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=(
                tf.TensorSpec([height, width, 3], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        same = tf.debugging.assert_equal(
            sizes,
            tf.broadcast_to(sizes[:1], tf.shape(sizes)),
            message=(
                f"{where}: all images in one request must have the same height and width (outputs are "
                "dense [batch, height, width] arrays at the input size); send images of different sizes in "
                "separate requests. Sizes (height, width) per image"
            ),
            summarize=64,
        )
        with tf.control_dependencies([same]):
            image_size = tf.reduce_max(sizes, axis=0)
        return padded, image_size, fit_size(image_size, self.input_size)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_default(self, images):
        """uint8 `[B, H, W, 3]` images, one size per batch -> the task's outputs for each image."""
        return self._run(*self._images_input(images, "serving_default"))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_bytes(self, image_bytes):
        """string `[B]` JPEG/PNG bytes, all of one size -> the task's outputs for each image (send images of
        different sizes in separate requests)."""
        return self._run(*self._bytes_input(image_bytes, "serving_bytes"))

    def trace(self) -> dict:
        """Traces the signatures and tracks the variables they read; returns name -> concrete function.

        The tracked variables are the `tf.Variable`s the graphs capture (not the Keras variables that wrap
        them): only then does a graph-mode loader such as TF Serving's, which restores weights through the
        SavedModel's saver, find them. Tracking only the Keras wrappers loads under `tf.saved_model.load`
        but fails in a TF1 session with "Could not find variable ...".
        """
        functions = {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
        unique = {id(v): v for f in functions.values() for v in f.variables}
        self.graph_variables = list(unique.values())
        return functions


class SegmentationServingModule(ServingModule):
    """Semantic segmentation outputs at each input image's own size.

    The model's logits `[B, s_h, s_w, K+1]` become probabilities (softmax), the part that covers the
    resized image (not the padding) is cut out and resized bilinearly to the input's H x W, and the
    mask is the argmax there.

    Outputs:
        `segmentation_mask` int32 `[B, H, W]`, contiguous class ids (0 = background);
        `segmentation_probs` float32 `[B, H, W, K+1]`, class probabilities.
    """

    output_names = ("segmentation_mask", "segmentation_probs")

    def postprocess(self, outputs, image_size, resized_size) -> dict:
        if not isinstance(outputs, tf.Tensor) or outputs.shape.rank != 4:
            raise ValueError(
                "export_segmentation: the model must return one logits tensor [batch, height, width, "
                f"num_classes + 1], got {outputs!r}; export the inference model, not a training wrapper."
            )
        probs = tf.nn.softmax(tf.cast(outputs, tf.float32), axis=-1)
        # The valid part of the logits: exactly the resized size when logits come at input resolution,
        # rounded up proportionally when they come at a stride.
        input_size = tf.constant(self.input_size, tf.int32)
        valid = (resized_size * tf.shape(probs)[1:3] + input_size - 1) // input_size
        probs = probs[:, : valid[0], : valid[1], :]
        probs = tf.image.resize(probs, image_size, method="bilinear")
        return {
            "segmentation_mask": tf.argmax(probs, axis=-1, output_type=tf.int32),
            "segmentation_probs": probs,
        }


class DetectionServingModule(ServingModule):
    """Detections in the TF Object Detection API layout, boxes normalized to each input image.

    The model's `detect` (decode + NMS in the graph) runs on the padded batch; its pixel boxes on the resized
    image divided by the resized size are the boxes normalized to the original image, since resizing keeps
    the aspect ratio and padding only adds pixels at the bottom/right.

    Outputs (K = the model's `max_detections`; rows after `num_detections` are padding):
        `detection_boxes` float32 `[B, K, 4]`, normalized `[ymin, xmin, ymax, xmax]` in [0, 1];
        `detection_scores` float32 `[B, K]`, highest first (padding 0);
        `detection_classes` int32 `[B, K]`, contiguous class ids 1..K (padding -1), names in `labels.txt`;
        `num_detections` int32 `[B]`;
        `detection_masks` float32 `[B, K, H, W]` (mask models only): each detection's mask probabilities pasted
        at the input image's size (threshold at 0.5 for a binary mask).
    """

    def __init__(self, model: keras.Model, input_size, with_masks: bool = False):
        super().__init__(model, input_size)
        self.with_masks = with_masks
        self.output_names = DETECTION_OUTPUTS + (("detection_masks",) if with_masks else ())

    def _run(self, padded, image_size, resized_size) -> dict:
        detections = self._model_ref.model.detect(padded)
        return self.postprocess(detections, image_size, resized_size)

    def postprocess(self, outputs, image_size, resized_size) -> dict:
        resized = tf.cast(resized_size, tf.float32)
        scale = tf.concat([resized, resized], axis=0)
        boxes = tf.clip_by_value(outputs["boxes"] / scale, 0.0, 1.0)
        valid = outputs["classes"] >= 0
        boxes = tf.where(valid[..., tf.newaxis], boxes, 0.0)
        result = {
            "detection_boxes": boxes,
            "detection_scores": outputs["scores"],
            "detection_classes": tf.cast(outputs["classes"], tf.int32),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32),
        }
        if self.with_masks:
            from tfvision.ops.masks import paste_masks

            size = tf.cast(image_size, tf.float32)
            image_boxes = boxes * tf.concat([size, size], axis=0)
            result["detection_masks"] = paste_masks(outputs["masks"], image_boxes, image_size)
        return result


DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


class RegionDetectionServingModule(DetectionServingModule):
    """Detections of a model on external region proposals (R-CNN, Fast R-CNN): the proposals are an input.

    Selective search is OpenCV code a graph cannot hold, so the client computes the proposals, as R-CNN
    deployments do, and both signatures take them beside the images:

    - `serving_default`: `images` uint8 `[B, H, W, 3]` and `proposals` float32 `[B, P, 4]`;
    - `serving_bytes`: `image_bytes` string `[B]` and `proposals` float32 `[B, P, 4]`.

    `proposals` are `[ymin, xmin, ymax, xmax]` normalized to each input image, as `detection_boxes` are
    (multiply by (H, W, H, W) for image pixels); P >= 1 and may differ between requests. In the graph they
    become pixels of the network input (times the resized size: the image is resized with its aspect ratio
    kept, then padded at the bottom/right), the model's `detect` runs on `{"images", "proposals"}`, and the
    outputs are `DetectionServingModule`'s. Proposals reaching into the padding (past 1) are allowed; the
    model clips them to its input.

    To get the detections training and evaluation measured, send the proposals selective search finds on the
    resized and padded S x S network input with the settings of `assets/proposals.json` (`extra_assets`),
    divided by the resized size: `tfvision.predict.export_proposals` does that.
    """

    def __init__(self, model: keras.Model, input_size):
        super().__init__(model, input_size, with_masks=False)

    def extra_assets(self) -> dict[str, str]:
        """`proposals.json`: what a client needs to compute proposals as training did."""
        model = self._model_ref.model
        settings = {
            "method": "selective_search",
            "mode": str(model.proposal_mode),
            "num_proposals": int(model.num_proposals),
            "min_side": int(model.proposal_min_side),
            "input_size": list(self.input_size),
        }
        return {PROPOSALS_ASSET: json.dumps(settings, indent=2) + "\n"}

    def verification_inputs(self) -> dict:
        """The base request plus 3 proposals per image: the whole image, a box inside, one into the padding."""
        boxes = tf.constant([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.6, 0.9], [0.5, 0.4, 1.3, 1.0]], tf.float32)
        inputs = super().verification_inputs()
        for request in inputs.values():
            batch = int(next(iter(request.values())).shape[0])
            request["proposals"] = tf.tile(boxes[tf.newaxis], [batch, 1, 1])
        return inputs

    def _proposal_pixels(self, proposals, batch, resized_size, where: str):
        """Checks `proposals` (TF Serving does not) and turns them into pixels of the network input.

        Args:
            proposals: float32 `[B, P, 4]` normalized yxyx, as sent (rank and shape checked here).
            batch: int32 [], the number of images in the request.
            resized_size: int32 `[2]`, the part of the input the images cover.
            where: the signature's name, for error messages.

        Returns:
            float32 `[B, P, 4]` yxyx pixels of the `S_h x S_w` network input.
        """
        usage = (
            f"{where}: `proposals` must be float32 [batch, num_proposals, 4], one row of boxes per image, "
            "[ymin, xmin, ymax, xmax] normalized to the image (as detection_boxes); compute them with the "
            "settings in assets/proposals.json (tfvision.predict.export_proposals)"
        )
        # EnsureShape checks the rank at run time (its node name is in the error); the rank is known
        # statically, so tf.rank would fold to a constant.
        proposals = tf.ensure_shape(
            proposals, [None, None, None], name="proposals_must_be_rank_3_batch_num_proposals_4"
        )
        shape = tf.shape(proposals)
        checks = [
            tf.debugging.assert_equal(shape[2], 4, message=f"{usage}. Last dimension"),
            tf.debugging.assert_equal(
                shape[0],
                batch,
                message=f"{usage}. Send as many rows of proposals as images; proposals batch vs images batch",
            ),
            tf.debugging.assert_positive(shape[1], message=f"{usage}. Send at least one proposal per image"),
        ]
        with tf.control_dependencies(checks):
            proposals = tf.ensure_shape(proposals, [None, None, 4], name="proposals_must_be_batch_num_proposals_4")
        resized = tf.cast(resized_size, tf.float32)
        return proposals * tf.concat([resized, resized], axis=0)

    def _detect(self, padded, image_size, resized_size, proposals, batch, where: str) -> dict:
        pixels = self._proposal_pixels(proposals, batch, resized_size, where)
        detections = self._model_ref.model.detect({"images": padded, "proposals": pixels})
        return self.postprocess(detections, image_size, resized_size)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
            tf.TensorSpec([None, None, 4], tf.float32, name="proposals"),
        ]
    )
    def serving_default(self, images, proposals):
        """uint8 `[B, H, W, 3]` images and their normalized proposals `[B, P, 4]` -> detections per image."""
        padded, image_size, resized = self._images_input(images, "serving_default")
        return self._detect(padded, image_size, resized, proposals, tf.shape(images)[0], "serving_default")

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes"),
            tf.TensorSpec([None, None, 4], tf.float32, name="proposals"),
        ]
    )
    def serving_bytes(self, image_bytes, proposals):
        """string `[B]` JPEG/PNG bytes, all of one size, and normalized proposals `[B, P, 4]` -> detections."""
        padded, image_size, resized = self._bytes_input(image_bytes, "serving_bytes")
        return self._detect(padded, image_size, resized, proposals, tf.shape(image_bytes)[0], "serving_bytes")


def _single_shape(shape):
    """A Keras `input_shape` / `output_shape` as one tuple, or None when the model has several tensors."""
    if isinstance(shape, tuple) and all(d is None or isinstance(d, int) for d in shape):
        return shape
    return None


# --- Versioned, atomic export ---


def _versions(experiment_dir: str) -> list[int]:
    if not os.path.isdir(experiment_dir):
        return []
    return sorted(int(n) for n in os.listdir(experiment_dir) if n.isdigit())


def _check_experiment(experiment: str) -> None:
    if not isinstance(experiment, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", experiment):
        raise ValueError(
            f"experiment {experiment!r} is not a valid export folder name; use letters, digits, '_', '-' "
            "and '.', not starting with '.' or '-' (it becomes <export_root>/<experiment>/)."
        )


def resolve_version(experiment_dir: str, version=None) -> int:
    """The version to write: `version` if given and free, else 1 + the highest existing numeric version.

    Raises:
        ValueError: `version` is not a positive int.
        FileExistsError: `<experiment_dir>/<version>` exists (an export is never overwritten).
    """
    if version is None:
        existing = _versions(experiment_dir)
        return existing[-1] + 1 if existing else 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(
            f"version must be a positive int (TF Serving's numeric version folder), got {version!r}."
        )
    version = int(version)
    if os.path.exists(os.path.join(experiment_dir, str(version))):
        raise FileExistsError(
            f"{os.path.join(experiment_dir, str(version))} already exists; exports are never overwritten. "
            "Pass another version, or none to take the next free one."
        )
    return version


def _check_inputs():
    """Tiny request used to check a written export: 2 images of 7 x 11 (not the model's size)."""
    image = np.arange(7 * 11 * 3, dtype=np.int64).reshape(7, 11, 3)
    images = np.stack([(image * 5) % 256, (image * 11 + 60) % 256]).astype(np.uint8)
    encoded = tf.stack([tf.io.encode_png(im) for im in images])
    return {"serving_default": {"images": tf.constant(images)}, "serving_bytes": {"image_bytes": encoded}}


def _verify_export(path: str, module: ServingModule) -> None:
    """Loads the export back and checks that both signatures run and agree with the in-memory module.

    Raises:
        RuntimeError: a signature is missing, an output is missing or not batch-major, or the reloaded
            graph disagrees with the in-memory one.
    """
    loaded = tf.saved_model.load(path)
    for asset in (LABELS_ASSET, *module.extra_assets()):
        if not os.path.isfile(os.path.join(path, "assets", asset)):
            raise RuntimeError(f"export check: {path}/assets/{asset} was not written.")
    for name, inputs in module.verification_inputs().items():
        if name not in loaded.signatures:
            raise RuntimeError(f"export check: signature {name!r} is missing from {path}.")
        got = loaded.signatures[name](**inputs)
        want = getattr(module, name)(**inputs)
        batch = int(next(iter(inputs.values())).shape[0])
        for key in module.output_names:
            if key not in got:
                raise RuntimeError(f"export check: {name} has no output {key!r} (outputs: {sorted(got)}).")
            if got[key].shape.rank == 0 or got[key].shape[0] != batch:
                raise RuntimeError(
                    f"export check: {name} output {key!r} has shape {got[key].shape}, not batch-major "
                    f"(first dimension {batch}); TF Serving's batching needs every output batch-major."
                )
            if not np.allclose(got[key].numpy(), want[key].numpy(), atol=1e-5):
                raise RuntimeError(
                    f"export check: {name} output {key!r} of the reloaded SavedModel differs from the "
                    "in-memory model."
                )


def export_serving_module(
    module: ServingModule, export_root, experiment: str, label_map, version=None, verbose: bool = True
) -> str:
    """Writes `module` as `<export_root>/<experiment>/<version>/`, atomically, and checks it loads.

    The SavedModel is written to `<experiment>/.tmp-<version>` (a non-numeric name TF Serving ignores),
    loaded back and called on a tiny request, and only then renamed to `<version>`. On any failure the
    temporary folder is removed, so no half-written version is ever visible. Local file systems only
    (the final rename is what makes it atomic).

    Args:
        module: a `ServingModule` wrapping the model.
        export_root: root folder, e.g. `saved_models`.
        experiment: the experiment name, one folder under `export_root`.
        label_map: `tfvision.data.label_map.LabelMap`, written as `assets/labels.txt`; the module's
            `extra_assets()` are written beside it.
        version: positive int, or None for 1 + the highest existing numeric version.
        verbose: show a progress bar.

    Returns:
        The path of the written version folder.

    Raises:
        FileExistsError: the version folder exists, or a temporary folder of the same version is left
            from an export that is running or crashed.
    """
    _check_experiment(experiment)
    experiment_dir = os.path.join(os.fspath(export_root), experiment)
    os.makedirs(experiment_dir, exist_ok=True)
    version = resolve_version(experiment_dir, version)
    final = os.path.join(experiment_dir, str(version))
    tmp = os.path.join(experiment_dir, f"{TMP_PREFIX}{version}")
    try:
        os.mkdir(tmp)  # exclusive: two exports of one version cannot both write here
    except FileExistsError:
        raise FileExistsError(
            f"{tmp} exists: another export of version {version} is running, or one crashed. Remove that "
            "folder if no export is running, then export again."
        ) from None

    progress = keras.utils.Progbar(3, verbose=1 if verbose else 0, unit_name="step")
    scratch = tempfile.mkdtemp(prefix="tfvision-assets-")
    try:
        texts = {LABELS_ASSET: label_map.to_text()}
        for name, text in module.extra_assets().items():
            if name in texts or os.path.basename(name) != name:
                raise ValueError(
                    f"{type(module).__name__}.extra_assets: {name!r} is not a free file name in assets/ "
                    f"({LABELS_ASSET} is the label map's)."
                )
            texts[name] = text
        assets = {}
        for name, text in texts.items():
            asset_path = os.path.join(scratch, name)
            with open(asset_path, "w", encoding="utf-8") as f:
                f.write(text)
            assets[name] = tf.saved_model.Asset(asset_path)
        # Tracked on the module, so save() copies them to assets/ and records them.
        module.label_file = assets.pop(LABELS_ASSET)
        module.extra_asset_files = assets
        # Plain convolutions: TF Serving runs no XLA cluster unless told to (see models.xla_convolutions).
        with plain_convolutions():
            tf.saved_model.save(module, tmp, signatures=module.trace())
            progress.update(1)
            _verify_export(tmp, module)
        progress.update(2)
        if os.path.exists(final):
            raise FileExistsError(f"{final} appeared while exporting; exports are never overwritten.")
        os.rename(tmp, final)
        progress.update(3)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def export_segmentation(
    model: keras.Model,
    export_root,
    experiment: str,
    label_map,
    input_size,
    version=None,
    verbose: bool = True,
) -> str:
    """Exports a semantic segmentation model for TF Serving (see the module docstring for the contract).

    Args:
        model: Keras model, float32 images `[B, S_h, S_w, 3]` in 0..255 -> logits `[B, S_h, S_w, K+1]`.
        export_root: root folder, e.g. `saved_models`.
        experiment: experiment name; the export is `<export_root>/<experiment>/<version>/`.
        label_map: `LabelMap` with K names; written as `assets/labels.txt`, background first.
        input_size: int or (height, width), the fixed size the model was trained at.
        version: positive int, or None for 1 + the highest existing numeric version.
        verbose: show a progress bar.

    Returns:
        The path of the written version folder.

    Example:
        >>> path = export_segmentation(model, "saved_models", "shapes_unet", label_map, 128)
        >>> served = tf.saved_model.load(path).signatures["serving_default"]
        >>> served(images=tf.zeros([1, 240, 320, 3], tf.uint8))["segmentation_mask"].shape
        TensorShape([1, 240, 320])
    """
    size = _input_size(input_size)
    in_shape, out_shape = _single_shape(model.input_shape), _single_shape(model.output_shape)
    if in_shape is None or len(in_shape) != 4:
        raise ValueError(
            f"export_segmentation: the model must take one image tensor [batch, height, width, 3], its input "
            f"shape is {model.input_shape}."
        )
    if any(s is not None and s != want for s, want in zip(in_shape[1:3], size)):
        raise ValueError(
            f"export_segmentation: input_size {size} does not match the model's input shape {in_shape}; pass "
            "the size the model was trained at."
        )
    channels = out_shape[-1] if out_shape else None
    if channels is not None and channels != label_map.num_classes + 1:
        raise ValueError(
            f"export_segmentation: the model outputs {channels} channels but the label map has "
            f"{label_map.num_classes} classes (+1 background = {label_map.num_classes + 1}); export the "
            "label map the model was trained with."
        )
    module = SegmentationServingModule(model, size)
    return export_serving_module(module, export_root, experiment, label_map, version, verbose)


def export_detection(
    model: keras.Model,
    export_root,
    experiment: str,
    label_map,
    input_size,
    version=None,
    verbose: bool = True,
) -> str:
    """Exports a detector for TF Serving (see `DetectionServingModule` for the outputs).

    A model with `takes_proposals` (R-CNN, Fast R-CNN) is exported with `RegionDetectionServingModule`: its
    signatures also take `proposals`, and `assets/proposals.json` says how to compute them.

    Args:
        model: a `tfvision.models.detection.detector.Detector` (anything with `detect(images)` and
            `image_size`; `detect({"images", "proposals"})` when it `takes_proposals`), trained at `input_size`.
        export_root: root folder, e.g. `saved_models`.
        experiment: experiment name; the export is `<export_root>/<experiment>/<version>/`.
        label_map: `LabelMap` with the K class names; written as `assets/labels.txt`, background first.
        input_size: int or (height, width), the size the model was trained at.
        version: positive int, or None for 1 + the highest existing numeric version.
        verbose: show a progress bar.

    Returns:
        The path of the written version folder.
    """
    size = _input_size(input_size)
    if not callable(getattr(model, "detect", None)):
        raise ValueError(
            f"export_detection: {type(model).__name__} has no detect(images) method; export a tfvision detector "
            "(built by tfvision.models.build_model), not its inner network."
        )
    if tuple(getattr(model, "image_size", size)) != size:
        raise ValueError(
            f"export_detection: input_size {size} differs from the size the detector was built for "
            f"{tuple(model.image_size)}; pass data.image_size of its config."
        )
    if getattr(model, "takes_proposals", False):
        module = RegionDetectionServingModule(model, size)
    else:
        module = DetectionServingModule(model, size, with_masks=bool(getattr(model, "predicts_masks", False)))
    return export_serving_module(module, export_root, experiment, label_map, version, verbose)
