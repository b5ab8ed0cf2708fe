"""SavedModel export for TF Serving: signatures checked in a fresh TensorFlow-only process, label asset,
version numbering, atomic writes, serving-time input errors, and the REST/gRPC request helpers."""

import base64
import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.data import transforms
from tfvision.data.label_map import LabelMap
from tfvision.export import saved_model, serving
from tfvision.export.saved_model import export_segmentation

S = 32  # the model's training size
LABEL_MAP = LabelMap(names=("red", "blue"), source_ids=(3, 7))
COLORS = {1: (220, 40, 40), 2: (40, 40, 220)}


# --- A tiny segmentation model and images it can read ---


def _shapes_images(rng, count, height, width):
    """uint8 [count, h, w, 3] dark noise with a red and a blue rectangle; int32 [count, h, w] labels."""
    images = rng.integers(0, 60, (count, height, width, 3)).astype(np.uint8)
    labels = np.zeros((count, height, width), np.int32)
    for i in range(count):
        for cls, color in COLORS.items():
            y0, x0 = rng.integers(0, height - 6), rng.integers(0, width - 6)
            y1, x1 = y0 + rng.integers(5, height // 2 + 6), x0 + rng.integers(5, width // 2 + 6)
            images[i, y0:y1, x0:x1] = np.clip(np.array(color) + rng.integers(-20, 20, 3), 0, 255)
            labels[i, y0:y1, x0:x1] = cls
    return images, labels


@pytest.fixture(scope="module")
def model():
    """Rescaling + 2 convs + 1x1 conv to K+1 logits at S x S, trained briefly so masks are not trivial."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((S, S, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    logits = keras.layers.Conv2D(LABEL_MAP.num_classes + 1, 1)(x)
    net = keras.Model(inputs, logits)
    images, labels = _shapes_images(np.random.default_rng(0), 64, S, S)
    net.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(images.astype(np.float32), labels, batch_size=16, epochs=8, verbose=0)
    return net


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    return export_segmentation(model, root, "shapes_seg", LABEL_MAP, S, verbose=False)


# --- Independent reference: NumPy resize / pad / crop / resize around the in-process Keras model ---


def _np_bilinear(x, out_h, out_w):
    """NumPy bilinear resize of [H, W, C] with half-pixel centres (what tf.image.resize computes)."""

    def axis(in_size, out_size):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(src)
        frac = src - low
        return np.maximum(low, 0).astype(int), np.minimum(np.ceil(src), in_size - 1).astype(int), frac

    y0, y1, fy = axis(x.shape[0], out_h)
    x0, x1, fx = axis(x.shape[1], out_w)
    x = x.astype(np.float64)
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * fx[None, :, None]
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * fx[None, :, None]
    return top + (bottom - top) * fy[:, None, None]


def _np_fit(height, width):
    scale = min(S / height, S / width)
    return (min(max(int(np.round(height * scale)), 1), S), min(max(int(np.round(width * scale)), 1), S))


def _reference(net, images):
    """(masks [B, H, W], probs [B, H, W, K+1]): resize to fit, zero pad, model, softmax, crop, resize back."""
    _, height, width, _ = images.shape
    nh, nw = _np_fit(height, width)
    padded = np.zeros((len(images), S, S, 3), np.float32)
    padded[:, :nh, :nw] = [_np_bilinear(im, nh, nw) for im in images]
    logits = net(padded, training=False).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    probs = np.stack([_np_bilinear(p[:nh, :nw], height, width) for p in probs])
    return probs.argmax(-1), probs


def _assert_matches_reference(outputs, net, images):
    mask, probs = outputs["segmentation_mask"], outputs["segmentation_probs"]
    ref_mask, ref_probs = _reference(net, images)
    assert mask.dtype == np.int32 and mask.shape == images.shape[:3]
    assert probs.dtype == np.float32 and probs.shape == images.shape[:3] + (LABEL_MAP.num_classes + 1,)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-4)
    # Masks must agree wherever the reference's decision is not a float-rounding tie.
    top2 = np.sort(ref_probs, axis=-1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-5
    assert decided.mean() > 0.999
    np.testing.assert_array_equal(mask[decided], ref_mask[decided])


# --- Geometry: the same resize as training ---


def test_fit_size_hand_values():
    # 40 x 56: scale 32/56, 40 * 32/56 = 22.86 -> 23; 50 x 30: 30 * 32/50 = 19.2 -> 19; 1 x 1000: 0.03 -> 1.
    cases = {
        (40, 56): (23, 32),
        (50, 30): (32, 19),
        (32, 32): (32, 32),
        (7, 11): (20, 32),  # 7 * 32/11 = 20.36: upscaled
        (1, 1000): (1, 32),
    }
    for size, want in cases.items():
        assert tuple(saved_model.fit_size(tf.constant(size), (S, S)).numpy()) == want
        assert _np_fit(*size) == want


def test_serving_preprocessing_is_training_resize_and_pad():
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3)).astype(np.uint8)
    padded, resized = saved_model.resize_and_pad_images(tf.cast(image[None], tf.float32), (S, S))
    training = transforms.resize_and_pad({"images": tf.constant(image)}, S)["images"].numpy()
    np.testing.assert_array_equal(padded[0].numpy(), training)
    assert tuple(resized.numpy()) == (23, 32) and not padded[0, 23:].numpy().any()
    np.testing.assert_allclose(padded[0, :23].numpy(), _np_bilinear(image, 23, 32), atol=1e-3)


# --- The export, as a TensorFlow-only process sees it ---

_CLIENT = r"""
import json, sys
for name in ("keras", "tf_keras", "tfvision"):
    sys.modules[name] = None  # any import of these fails: the export must not need them
import numpy as np
import tensorflow as tf

export_dir, work = sys.argv[1], sys.argv[2]
loaded = tf.saved_model.load(export_dir)
arrays = np.load(f"{work}/arrays.npz")
files = json.load(open(f"{work}/files.json"))
out = {}
info = {"labels": tf.io.read_file(loaded.label_file.asset_path).numpy().decode(), "signatures": {}}
for name, fn in loaded.signatures.items():
    specs = fn.structured_input_signature[1]
    inputs = {k: [spec.dtype.name, spec.shape.as_list()] for k, spec in specs.items()}
    outputs = {k: [spec.dtype.name, spec.shape.as_list()] for k, spec in fn.structured_outputs.items()}
    info["signatures"][name] = {"inputs": inputs, "outputs": outputs}

def save(request, result):
    for key, value in result.items():
        out[f"{request}/{key}"] = value.numpy()

for request in arrays.files:
    save(request, loaded.signatures["serving_default"](images=tf.constant(arrays[request])))
for request, paths in files.items():
    data = tf.stack([tf.io.read_file(p) for p in paths])
    save(request, loaded.signatures["serving_bytes"](image_bytes=data))
    decoded = tf.stack([tf.io.decode_image(d, channels=3, expand_animations=False) for d in data])
    save(request + "_decoded", loaded.signatures["serving_default"](images=decoded))

# Graph mode, as TF Serving's C++ loader runs it: weights restored by the SavedModel's saver, the signature's
# placeholder fed by tensor name.
with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta = tf.compat.v1.saved_model.load(session, ["serve"], export_dir)
    sig = meta.signature_def["serving_default"]
    names = sorted(sig.outputs)
    values = session.run([sig.outputs[n].name for n in names], {sig.inputs["images"].name: arrays["wide3"]})
    for n, v in zip(names, values):
        out[f"session_wide3/{n}"] = v
np.savez(f"{work}/outputs.npz", **out)
json.dump(info, open(f"{work}/info.json", "w"))
"""


def _encode(image, ext):
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def served(export_dir, tmp_path_factory):
    """Runs the client in a fresh Python process; returns (inputs, outputs, info)."""
    work = tmp_path_factory.mktemp("client")
    rng = np.random.default_rng(2)
    wide, _ = _shapes_images(rng, 3, 40, 56)
    tall, _ = _shapes_images(rng, 3, 50, 30)
    arrays = {"wide1": wide[:1], "wide3": wide, "tall3": tall}
    files = {}
    encoded = (("wide3_png", wide, ".png"), ("tall1_png", tall[:1], ".png"), ("wide3_jpeg", wide, ".jpg"))
    for request, images, ext in encoded:
        files[request] = []
        for i, image in enumerate(images):
            path = work / f"{request}_{i}{ext}"
            path.write_bytes(_encode(image, ext))
            files[request].append(str(path))
    np.savez(work / "arrays.npz", **arrays)
    (work / "files.json").write_text(json.dumps(files))
    (work / "client.py").write_text(_CLIENT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(
        [sys.executable, str(work / "client.py"), export_dir, str(work)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(work / "outputs.npz") as data:
        flat = {key: data[key] for key in data.files}
    outputs = {}
    for key, value in flat.items():
        request, name = key.split("/")
        outputs.setdefault(request, {})[name] = value
    inputs = dict(arrays, wide3_png=wide, tall1_png=tall[:1])
    return inputs, outputs, json.loads((work / "info.json").read_text())


def test_signatures_declare_the_contract(served):
    _, _, info = served
    sigs = info["signatures"]
    assert set(sigs) == {"serving_default", "serving_bytes"}
    assert sigs["serving_default"]["inputs"] == {"images": ["uint8", [None, None, None, 3]]}
    assert sigs["serving_bytes"]["inputs"] == {"image_bytes": ["string", [None]]}
    for sig in sigs.values():
        assert sig["outputs"] == {
            "segmentation_mask": ["int32", [None, None, None]],
            "segmentation_probs": ["float32", [None, None, None, 3]],
        }


def test_serving_default_matches_keras_model_at_input_size(served, model):
    inputs, outputs, _ = served
    for request in ("wide1", "wide3", "tall3"):
        _assert_matches_reference(outputs[request], model, inputs[request])
    # Batch of one equals the first row of the batch of three: images in a batch do not affect each other.
    masks = {request: outputs[request]["segmentation_mask"] for request in ("wide1", "wide3")}
    np.testing.assert_array_equal(masks["wide1"], masks["wide3"][:1])
    # The masks are not trivial: background and both classes appear, roughly where they were drawn.
    assert set(np.unique(outputs["wide3"]["segmentation_mask"])) == {0, 1, 2}
    np.testing.assert_allclose(outputs["tall3"]["segmentation_probs"].sum(-1), 1.0, atol=1e-5)


def test_serving_bytes_decodes_png_and_jpeg_like_serving_default(served, model):
    inputs, outputs, _ = served
    for request in ("wide3_png", "tall1_png"):
        _assert_matches_reference(outputs[request], model, inputs[request])
        for key in ("segmentation_mask", "segmentation_probs"):
            np.testing.assert_array_equal(outputs[request][key], outputs[request + "_decoded"][key])
    # JPEG is lossy, so it is compared with serving_default on the same decoded pixels.
    for key in ("segmentation_mask", "segmentation_probs"):
        np.testing.assert_array_equal(outputs["wide3_jpeg"][key], outputs["wide3_jpeg_decoded"][key])
    assert outputs["wide3_jpeg"]["segmentation_mask"].shape == (3, 40, 56)


def test_graph_mode_loader_restores_weights(served):
    _, outputs, _ = served
    for key in ("segmentation_mask", "segmentation_probs"):
        np.testing.assert_allclose(outputs["session_wide3"][key], outputs["wide3"][key], atol=1e-6)


def test_label_map_is_an_asset_clients_can_read(export_dir, served):
    _, _, info = served
    path = os.path.join(export_dir, "assets", "labels.txt")
    assert open(path, encoding="utf-8").read() == "background\nred\nblue\n" == LABEL_MAP.to_text()
    assert info["labels"] == LABEL_MAP.to_text()
    assert serving.read_labels(export_dir) == ["background", "red", "blue"]
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        serving.read_labels(os.path.dirname(export_dir))


# --- Serving-time input errors ---


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(export_dir)


def test_bad_requests_fail_with_a_clear_message(loaded):
    images = loaded.signatures["serving_default"]
    bad = tf.errors.InvalidArgumentError
    with pytest.raises(bad, match=r"must be uint8 \[batch, height, width, 3\] \(RGB\)"):
        images(images=tf.zeros([1, 8, 8, 4], tf.uint8))
    with pytest.raises(bad, match=r"\[8,8,3\] is not compatible with expected shape \[\?,\?,\?,3\]"):
        images(images=tf.zeros([8, 8, 3], tf.uint8))
    with pytest.raises(bad, match="uint8"):
        images(images=tf.zeros([1, 8, 8, 3], tf.float32))
    with pytest.raises(bad, match="at least one image"):
        images(images=tf.zeros([0, 8, 8, 3], tf.uint8))
    files = loaded.signatures["serving_bytes"]
    small, large = (tf.io.encode_png(tf.zeros([h, 8, 3], tf.uint8)) for h in (8, 9))
    with pytest.raises(bad, match="same height and width"):
        files(image_bytes=tf.stack([small, large]))
    with pytest.raises(bad, match="Unknown image file format"):
        files(image_bytes=tf.constant([b"not an image"]))
    with pytest.raises(bad, match="at least one image"):
        files(image_bytes=tf.zeros([0], tf.string))
    # A grayscale PNG is decoded to 3 channels, as TF Serving clients would expect.
    gray = tf.io.encode_png(tf.fill([6, 9, 1], tf.constant(200, tf.uint8)))
    assert files(image_bytes=tf.stack([gray]))["segmentation_mask"].shape == (1, 6, 9)


# --- Versions and atomic writes ---


def _listing(path):
    return sorted(os.listdir(path))


def test_versions_count_up_and_are_never_overwritten(model, tmp_path):
    first = export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, verbose=False)
    second = export_segmentation(model, tmp_path, "exp", LABEL_MAP, (S, S), verbose=False)
    assert (first, second) == (str(tmp_path / "exp" / "1"), str(tmp_path / "exp" / "2"))
    stamp = os.stat(os.path.join(second, "saved_model.pb")).st_mtime_ns
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, version=2, verbose=False)
    assert os.stat(os.path.join(second, "saved_model.pb")).st_mtime_ns == stamp
    assert export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, version=10, verbose=False).endswith("10")
    assert export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, verbose=False).endswith("11")
    assert _listing(tmp_path / "exp") == ["1", "10", "11", "2"]
    for bad in (0, -1, "3", 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, version=bad, verbose=False)


def test_a_failed_export_leaves_nothing_behind(model, tmp_path, monkeypatch):
    def broken_check(path, module):
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))  # it fails after writing
        raise RuntimeError("injected check failure")

    with monkeypatch.context() as patch:
        patch.setattr(saved_model, "_verify_export", broken_check)
        with pytest.raises(RuntimeError, match="injected"):
            export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, version=4, verbose=False)
    assert _listing(tmp_path / "exp") == []
    # Nothing blocks a retry of the same version.
    assert export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, version=4, verbose=False).endswith("4")
    assert _listing(tmp_path / "exp") == ["4"]


def test_a_leftover_temporary_folder_is_reported(model, tmp_path):
    os.makedirs(tmp_path / "exp" / ".tmp-1")
    with pytest.raises(FileExistsError, match=r"\.tmp-1 exists"):
        export_segmentation(model, tmp_path, "exp", LABEL_MAP, S, verbose=False)
    assert _listing(tmp_path / "exp") == [".tmp-1"]


def test_export_rejects_a_model_that_does_not_fit(model, tmp_path):
    with pytest.raises(ValueError, match="3 channels but the label map has 1 classes"):
        export_segmentation(model, tmp_path, "exp", LabelMap(names=("one",)), S, verbose=False)
    with pytest.raises(ValueError, match="does not match the model's input shape"):
        export_segmentation(model, tmp_path, "exp", LABEL_MAP, 64, verbose=False)
    with pytest.raises(ValueError, match="input_size"):
        export_segmentation(model, tmp_path, "exp", LABEL_MAP, (S, S, 3), verbose=False)
    with pytest.raises(ValueError, match="valid export folder name"):
        export_segmentation(model, tmp_path, "../up", LABEL_MAP, S, verbose=False)
    assert not (tmp_path / "exp").exists() or _listing(tmp_path / "exp") == []


# --- Client helpers: the REST body TF Serving documents (api_rest.md, "Predict API") ---


def test_rest_body_for_images_is_row_format_nested_lists():
    images = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    body = json.loads(serving.predict_request_json(images))
    # One named input: each instance is that input's value.
    assert body == {"signature_name": "serving_default", "instances": images.tolist()}
    assert body["instances"][1][0][2] == [24, 25, 26]  # image 1, row 0, column 2: offset 18 + 6
    columnar = serving.predict_request(images, columnar=True)
    assert columnar == {"signature_name": "serving_default", "inputs": {"images": images.tolist()}}
    np.testing.assert_array_equal(np.asarray(columnar["inputs"]["images"], np.uint8), images)
    for bad in (images.astype(np.float32), images[0], np.zeros((1, 4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match=r"uint8 array \[batch, height, width, 3\]"):
            serving.predict_request(bad)


def test_rest_body_for_files_is_base64():
    files = [b"\x89PNG\r\n\x1a\nfake", b"\xff\xd8\xff\xe0 jpeg"]
    body = json.loads(serving.predict_request_json(files))
    assert body["signature_name"] == "serving_bytes" and len(body["instances"]) == 2
    assert body["instances"][0] == {"b64": base64.b64encode(files[0]).decode()}
    assert [base64.b64decode(item["b64"]) for item in body["instances"]] == files
    assert serving.predict_request(files, columnar=True)["inputs"]["image_bytes"][1] == {
        "b64": base64.b64encode(files[1]).decode()
    }
    assert serving.predict_request(files, signature_name="other")["signature_name"] == "other"
    assert serving.predict_url("localhost", "seg") == "http://localhost:8501/v1/models/seg:predict"
    assert serving.predict_url("h", "seg", 3, port=9) == "http://h:9/v1/models/seg/versions/3:predict"


def test_rest_round_trip_through_the_export(loaded):
    """What a server does with the body (JSON -> tensors by the input's dtype, outputs -> row JSON) parses
    back to the signature's own outputs."""
    images = np.random.default_rng(3).integers(0, 256, (2, 9, 13, 3)).astype(np.uint8)
    files = [_encode(image, ".png") for image in images]
    for body in (serving.predict_request(images), serving.predict_request(files)):
        body = json.loads(json.dumps(body))
        signature = loaded.signatures[body["signature_name"]]
        if body["signature_name"] == "serving_default":
            result = signature(images=tf.constant(body["instances"], tf.uint8))
        else:
            data = [base64.b64decode(item["b64"]) for item in body["instances"]]
            result = signature(image_bytes=tf.constant(data))
        result = {k: v.numpy() for k, v in result.items()}
        rows = [{k: v[i].tolist() for k, v in result.items()} for i in range(2)]
        parsed = serving.parse_predict_response(json.dumps({"predictions": rows}))
        columns = serving.parse_predict_response({"outputs": {k: v.tolist() for k, v in result.items()}})
        for got in (parsed, columns):
            assert got["segmentation_mask"].dtype == np.int32
            assert got["segmentation_probs"].dtype == np.float32
            np.testing.assert_array_equal(got["segmentation_mask"], result["segmentation_mask"])
            np.testing.assert_allclose(got["segmentation_probs"], result["segmentation_probs"], rtol=1e-6)


def test_parse_predict_response_forms_and_errors():
    assert serving.parse_predict_response('{"predictions": [3.5, 4.0]}')["output"].tolist() == [3.5, 4.0]
    got = serving.parse_predict_response({"outputs": [[1, 2]]}, dtypes={"output": np.uint8})
    assert got["output"].dtype == np.uint8
    blobs = serving.parse_predict_response({"predictions": [{"b64": base64.b64encode(b"ab").decode()}]})
    assert blobs["output"].tolist() == [b"ab"]
    with pytest.raises(RuntimeError, match="Servable not found"):
        serving.parse_predict_response('{"error": "Servable not found for request: Latest(half)"}')
    with pytest.raises(ValueError, match="'predictions' or 'outputs'"):
        serving.parse_predict_response({"results": [1]})


def test_grpc_inputs_are_tensor_protos():
    images = np.random.default_rng(4).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    name, inputs = serving.grpc_predict_inputs(images)
    assert name == "serving_default" and list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(inputs["images"]), images)
    name, inputs = serving.grpc_predict_inputs([b"\x00png", b"jpg\x00"])
    assert name == "serving_bytes" and inputs["image_bytes"].string_val == [b"\x00png", b"jpg\x00"]
    proto = tf.make_tensor_proto(np.eye(2, dtype=np.int32))
    outputs = serving.parse_grpc_outputs({"segmentation_mask": proto})
    np.testing.assert_array_equal(outputs["segmentation_mask"], np.eye(2))


def test_requests_carry_region_proposals_for_exports_that_take_them():
    images = np.zeros((2, 4, 5, 3), np.uint8)
    proposals = np.array([[[0, 0, 0.5, 0.5]], [[0.25, 0.25, 1, 1]]], np.float32)
    rows = serving.predict_request(images, proposals=proposals)["instances"]
    assert rows == [{"images": images[i].tolist(), "proposals": proposals[i].tolist()} for i in range(2)]
    columns = serving.predict_request(images, columnar=True, proposals=proposals)["inputs"]
    assert columns["proposals"] == proposals.tolist() and columns["images"] == images.tolist()
    _, inputs = serving.grpc_predict_inputs(images, proposals=proposals)
    np.testing.assert_array_equal(tf.make_ndarray(inputs["proposals"]), proposals)
    for bad in (proposals[0], proposals[:1], np.zeros((2, 0, 4)), np.zeros((2, 3, 5))):
        with pytest.raises(ValueError, match=r"proposals must be float32 \[batch=2"):
            serving.predict_request(images, proposals=bad)
