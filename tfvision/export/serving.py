"""Client-side helpers for TF Serving: request bodies for an export's signatures, and their responses.

An export (`tfvision.export.saved_model`) has two signatures: `serving_default` takes `images` uint8
`[batch, height, width, 3]`, `serving_bytes` takes `image_bytes`, a batch of JPEG/PNG files; exports of
R-CNN and Fast R-CNN take `proposals` float32 `[batch, P, 4]` besides (`tfvision.predict.export_proposals`
computes them as training did). The REST API
(https://www.tensorflow.org/tfx/serving/api_rest, "Predict API") takes

    POST http://host:8501/v1/models/<name>[/versions/<version>]:predict
    {"signature_name": ..., "instances": [...]}     (row format: one entry per image)
    {"signature_name": ..., "inputs": {name: ...}}  (columnar format: one tensor per input)

with tensors as nested lists and binary strings as `{"b64": <base64>}`, and answers
`{"predictions": [{output: value, ...}, ...]}` (row) or `{"outputs": {output: tensor, ...}}` (columnar), or
`{"error": message}`. The REST helpers need only NumPy; the gRPC helpers build `TensorProto`s with
TensorFlow (imported when called), to be copied into a `tensorflow_serving.apis.predict_pb2.PredictRequest`.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np

LABELS_ASSET = "labels.txt"  # the label map's file in an export's assets/ (written by saved_model.py)
# dtypes of the contract's outputs: JSON numbers carry no dtype, so responses are cast back to these.
OUTPUT_DTYPES = {"segmentation_mask": np.int32, "segmentation_probs": np.float32}


def predict_url(host: str, model_name: str, version: int | None = None, port: int = 8501) -> str:
    """The REST predict URL; without `version` TF Serving uses the highest version it has loaded."""
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    return f"http://{host}:{port}{path}:predict"


def _signature_input(images):
    """(default signature name, input name, per-image JSON values) for an image batch or a list of files."""
    files = isinstance(images, (list, tuple)) and len(images) > 0
    if files and all(isinstance(b, (bytes, bytearray)) for b in images):
        values = [{"b64": base64.b64encode(bytes(b)).decode("ascii")} for b in images]
        return "serving_bytes", "image_bytes", values
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            "predict request: images must be a uint8 array [batch, height, width, 3] (for one image use "
            "image[None]; cast floats with np.clip(x, 0, 255).astype(np.uint8)) or a list of encoded "
            f"JPEG/PNG bytes; got {type(images).__name__} of dtype {array.dtype} and shape {array.shape}."
        )
    return "serving_default", "images", array.tolist()


def _proposals_array(proposals, batch: int) -> np.ndarray:
    """Region proposals as float32 `[batch, P, 4]`, checked against the image batch."""
    array = np.asarray(proposals, np.float32)
    if array.ndim != 3 or array.shape[0] != batch or array.shape[-1] != 4 or array.shape[1] < 1:
        raise ValueError(
            f"predict request: proposals must be float32 [batch={batch}, P >= 1, 4] (normalized yxyx boxes per "
            f"image, e.g. from tfvision.predict.export_proposals); got shape {array.shape}."
        )
    return array


def predict_request(images, signature_name: str | None = None, columnar: bool = False, proposals=None) -> dict:
    """The body of a TF Serving REST predict request, as a dict ready for `json.dumps`.

    Args:
        images: uint8 array `[batch, height, width, 3]` (for `serving_default`), or a list of encoded
            JPEG/PNG `bytes` (for `serving_bytes`, sent base64 as `{"b64": ...}`).
        signature_name: overrides the signature the input implies.
        columnar: use the columnar `inputs` format instead of the row `instances` format.
        proposals: float32 `[batch, P, 4]` normalized yxyx region proposals, for R-CNN and Fast R-CNN
            exports (which have a `proposals` input); None for every other export.

    Returns:
        `{"signature_name": ..., "instances": [...]}` or `{"signature_name": ..., "inputs": {name: [...]}}`.
    """
    default_signature, input_name, values = _signature_input(images)
    body = {"signature_name": signature_name or default_signature}
    extra = {} if proposals is None else {"proposals": _proposals_array(proposals, len(values)).tolist()}
    if columnar:
        body["inputs"] = {input_name: values, **extra}
    elif extra:
        # Several named inputs: each instance is a dict of that image's values (api_rest.md, "row format").
        body["instances"] = [{input_name: v, "proposals": p} for v, p in zip(values, extra["proposals"])]
    else:
        # One named input: each instance is that input's value (api_rest.md, "row format").
        body["instances"] = values
    return body


def predict_request_json(images, signature_name: str | None = None, columnar: bool = False, proposals=None) -> str:
    """`predict_request` serialized: the JSON text to POST to `predict_url(...)`."""
    return json.dumps(predict_request(images, signature_name, columnar, proposals))


def _decode_value(value):
    """JSON value -> NumPy, turning `{"b64": ...}` leaves back into bytes."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _as_array(name, value, dtypes):
    value = _decode_value(value)
    dtype = dtypes.get(name)
    return np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)


def parse_predict_response(response, dtypes: dict | None = None, single_output_name: str = "output") -> dict:
    """A TF Serving REST predict response as a dict of NumPy arrays, batch first.

    Args:
        response: the response body, as text, bytes or already-parsed dict.
        dtypes: output name -> NumPy dtype, added to `OUTPUT_DTYPES` (JSON numbers carry no dtype).
        single_output_name: the key to use when the model has one output, which TF Serving sends unnamed.

    Returns:
        output name -> array.

    Raises:
        RuntimeError: the server answered `{"error": ...}`.
        ValueError: the body has neither `predictions` nor `outputs`.
    """
    body = json.loads(response) if isinstance(response, (str, bytes, bytearray)) else response
    dtypes = {**OUTPUT_DTYPES, **(dtypes or {})}
    if "error" in body:
        raise RuntimeError(f"TF Serving answered with an error: {body['error']}")
    if "predictions" in body:
        rows = body["predictions"]
        if rows and all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
            return {name: _as_array(name, [r[name] for r in rows], dtypes) for name in rows[0]}
        return {single_output_name: _as_array(single_output_name, rows, dtypes)}
    if "outputs" in body:
        outputs = body["outputs"]
        if isinstance(outputs, dict) and set(outputs) != {"b64"}:
            return {name: _as_array(name, value, dtypes) for name, value in outputs.items()}
        return {single_output_name: _as_array(single_output_name, outputs, dtypes)}
    raise ValueError(
        f"not a TF Serving predict response: expected a 'predictions' or 'outputs' key, got {sorted(body)}."
    )


def grpc_predict_inputs(images, signature_name: str | None = None, proposals=None) -> tuple[str, dict]:
    """Signature name and inputs of a gRPC `PredictRequest`, as `TensorProto`s.

    Use as `request.model_spec.signature_name = name` and `request.inputs[key].CopyFrom(proto)` for each
    item (`tensorflow_serving.apis.predict_pb2`).

    Args:
        images: as for `predict_request` (binary strings go raw in a `TensorProto`, not base64).
        signature_name: overrides the signature the input implies.
        proposals: as for `predict_request`.

    Returns:
        (signature name, {input name: tensorflow.TensorProto}).
    """
    import tensorflow as tf

    default_signature, input_name, _ = _signature_input(images)
    if input_name == "image_bytes":
        proto = tf.make_tensor_proto([bytes(b) for b in images], dtype=tf.string)
    else:
        proto = tf.make_tensor_proto(np.asarray(images), dtype=tf.uint8)
    inputs = {input_name: proto}
    if proposals is not None:
        inputs["proposals"] = tf.make_tensor_proto(_proposals_array(proposals, len(images)), dtype=tf.float32)
    return signature_name or default_signature, inputs


def parse_grpc_outputs(outputs) -> dict:
    """A gRPC `PredictResponse.outputs` map (name -> TensorProto) as name -> NumPy array."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in outputs.items()}


def read_labels(export_dir) -> list[str]:
    """Class names of an export, index = contiguous class id (0 = background), from `assets/labels.txt`."""
    path = os.path.join(os.fspath(export_dir), "assets", LABELS_ASSET)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found; give a version folder written by tfvision export "
            "(<root>/<experiment>/<version>)."
        )
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()
