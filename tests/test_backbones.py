"""Tests for tfvision.backbones: level shapes, in-graph normalization, pooling indices, the weights routes."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from tfvision.backbones import ImageNormalization, build_backbone, encoder_stages
from tfvision.config import BackboneConfig
from layer_testing import assert_serialization_round_trip


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


# (name, channels of level1..level5) as documented in tfvision/backbones/backbones.py.
LEVEL_CHANNELS = [
    ("tiny", (4, 8, 16, 32, 32)),  # width 4: w, 2w, 4w, 8w, 8w
    ("vgg16", (64, 128, 256, 512, 512)),
    ("resnet50", (64, 256, 512, 1024, 2048)),
    ("mobilenetv2", (96, 144, 192, 576, 1280)),
    ("mobilenetv3large", (64, 72, 240, 672, 960)),
]


@pytest.mark.parametrize("name, channels", LEVEL_CHANNELS)
def test_levels_have_documented_strides_and_channels(name, channels):
    backbone = build_backbone(BackboneConfig(name=name, width=4), (64, 64, 3))
    assert backbone.name == "backbone"
    assert sorted(backbone.output) == [f"level{k}" for k in range(1, 6)]
    for k, c in enumerate(channels, start=1):
        assert tuple(backbone.output[f"level{k}"].shape) == (None, 64 // 2**k, 64 // 2**k, c)


def test_tiny_runs_on_any_size_with_floor_pooling():
    backbone = build_backbone(BackboneConfig(name="tiny", width=4), (None, None, 3))
    features = backbone(_images((2, 70, 45, 3)))
    # 'valid' 2x2 pools: 70 -> 35 -> 17 -> 8 -> 4 -> 2 and 45 -> 22 -> 11 -> 5 -> 2 -> 1.
    expected = {1: (35, 22), 2: (17, 11), 3: (8, 5), 4: (4, 2), 5: (2, 1)}
    for k, (h, w) in expected.items():
        assert tuple(features[f"level{k}"].shape) == (2, h, w, 4 * 2 ** min(k - 1, 3))


def test_max_level_truncates_outputs():
    backbone = build_backbone(BackboneConfig(name="tiny", width=4), (None, None, 3), max_level=3)
    assert sorted(backbone.output) == ["level1", "level2", "level3"]
    assert not any(layer.name.startswith("block4") for layer in backbone.layers)


def test_normalization_hand_worked_values():
    pixel = np.array([[[[255.0, 0.0, 51.0]]]], "float32")  # one RGB pixel
    caffe = ImageNormalization("caffe")(pixel)
    # caffe: BGR order, minus the ImageNet BGR mean (103.939, 116.779, 123.68).
    np.testing.assert_allclose(np.asarray(caffe)[0, 0, 0], [51 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ImageNormalization("tf")(pixel))[0, 0, 0], [1.0, -1.0, -0.6], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ImageNormalization("unit")(pixel))[0, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)


@pytest.mark.parametrize(
    "mode, reference",
    [
        ("caffe", keras.applications.vgg16.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ],
)
def test_normalization_matches_keras_applications_preprocess_input(mode, reference):
    images = _images((2, 5, 7, 3))
    expected = reference(images.copy())
    np.testing.assert_allclose(np.asarray(ImageNormalization(mode)(images)), expected, rtol=1e-5, atol=1e-4)


def test_normalization_layer_round_trip(tmp_path):
    assert_serialization_round_trip(ImageNormalization, {"mode": "caffe"}, _images((2, 4, 4, 3)), tmp_path=tmp_path)


def test_normalization_rejects_bad_mode_and_channels():
    with pytest.raises(ValueError, match="mode must be one of"):
        ImageNormalization("torchvision")
    with pytest.raises(ValueError, match="RGB images"):
        ImageNormalization("unit")(np.zeros((1, 4, 4, 1), "float32"))


def _reference_pool_with_argmax(x):
    """NumPy 2x2 stride-2 'valid' max pool and flat NHWC indices ((b * H + y) * W + x) * C + c."""
    batch, height, width, channels = x.shape
    pooled = np.zeros((batch, height // 2, width // 2, channels), x.dtype)
    indices = np.zeros(pooled.shape, np.int64)
    for b, i, j, c in np.ndindex(pooled.shape):
        window = x[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
        dy, dx = np.unravel_index(np.argmax(window), (2, 2))
        pooled[b, i, j, c] = window[dy, dx]
        indices[b, i, j, c] = ((b * height + 2 * i + dy) * width + 2 * j + dx) * channels + c
    return pooled, indices


def test_pool_indices_point_at_the_maxima():
    keras.utils.set_random_seed(7)  # the conv kernels; the test must not depend on the order tests ran in
    backbone = build_backbone(BackboneConfig(name="tiny", width=4), (None, None, 3), pool_indices=True)
    keys = {f"{kind}{k}" for kind in ("level", "indices", "prepool") for k in range(1, 6)}
    assert set(backbone.output) == keys
    # BatchNorm with zero mean, unit variance and a positive shift, so the ReLU maps are mostly positive
    # (unique maxima) rather than ties at zero.
    rng = np.random.default_rng(1)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            shift = rng.uniform(0.5, 1.5, beta.shape).astype("float32")
            scale = rng.uniform(0.5, 1.5, gamma.shape).astype("float32")
            layer.set_weights([scale, shift, np.zeros_like(mean), np.ones_like(variance)])
    features = backbone(_images((2, 36, 44, 3)))  # odd sizes on the way: 44 -> 22 -> 11 -> 5 -> 2 -> 1
    for k in range(1, 6):
        prepool = np.asarray(features[f"prepool{k}"])
        pooled, indices = _reference_pool_with_argmax(prepool)
        np.testing.assert_array_equal(np.asarray(features[f"level{k}"]), pooled)
        unique = pooled > 0  # where the maximum is unique (a positive value, not a tie of zeros after ReLU)
        assert unique.mean() > 0.3
        np.testing.assert_array_equal(np.asarray(features[f"indices{k}"])[unique], indices[unique])


def test_vgg16_with_pool_indices_keeps_application_layer_names():
    backbone = build_backbone(BackboneConfig(name="vgg16"), (32, 32, 3), pool_indices=True)
    application = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    ours = [layer.name for layer in backbone.layers if layer.weights]
    theirs = [layer.name for layer in application.layers if layer.weights]
    assert ours == theirs
    assert [len(stage) for stage in encoder_stages(backbone)] == [2, 2, 3, 3, 3]
    assert [type(backbone.get_layer(f"block{k}_pool")).__name__ for k in range(1, 6)] == ["MaxPoolingWithArgmax2D"] * 5


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "mobilenetv3large"])
def test_pool_indices_need_a_pooling_encoder(name):
    with pytest.raises(ValueError, match="strided convolutions.*tiny, vgg16"):
        build_backbone(BackboneConfig(name=name), (64, 64, 3), pool_indices=True)


def test_encoder_stages_rejects_non_plain_models():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="conv")])
    with pytest.raises(ValueError, match="block<k>_conv<j>"):
        encoder_stages(model)


def test_unknown_backbone_lists_valid_names():
    valid = "mobilenetv2, mobilenetv3large, resnet50, tiny, vgg16"
    with pytest.raises(ValueError, match=f"unknown backbone 'vgg19'.*{valid}"):
        build_backbone(BackboneConfig(name="vgg19"), (64, 64, 3))


@pytest.mark.parametrize("shape", [(16, 64, 3), (64, 64, 1), (64, 64)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape must be"):
        build_backbone(BackboneConfig(name="tiny"), shape)


def test_bad_weights_values(tmp_path):
    with pytest.raises(ValueError, match="tiny backbone has no ImageNet weights"):
        build_backbone(BackboneConfig(name="tiny", weights="imagenet"), (32, 32, 3))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone(BackboneConfig(name="tiny", weights=str(tmp_path / "missing.weights.h5")), (32, 32, 3))
    with pytest.raises(ValueError, match="width"):
        build_backbone(BackboneConfig(name="tiny", width=0), (32, 32, 3))


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.get_weights()])


# Keras warns about the groups it cannot match while it fails to load the wrong-width file below.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_round_trip(tmp_path):
    source = build_backbone(BackboneConfig(name="tiny", width=4), (None, None, 3))
    _randomize(source, seed=3)
    path = str(tmp_path / "tiny.weights.h5")
    source.save_weights(path)

    loaded = build_backbone(BackboneConfig(name="tiny", width=4, weights=path), (None, None, 3))
    for expected, actual in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, expected)
    images = _images((1, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(loaded(images)["level5"]), np.asarray(source(images)["level5"]))

    # A truncated backbone takes the full backbone's file (only the layers it keeps).
    truncated = build_backbone(BackboneConfig(name="tiny", width=4, weights=path), (None, None, 3), max_level=2)
    np.testing.assert_array_equal(
        truncated.get_layer("block2_conv1").get_weights()[0], source.get_layer("block2_conv1").get_weights()[0]
    )
    # A file of another width does not fit, and the error names the file.
    with pytest.raises(ValueError, match="could not load .*tiny.weights.h5"):
        build_backbone(BackboneConfig(name="tiny", width=8, weights=path), (None, None, 3))


def test_application_backbone_weights_file_round_trip(tmp_path):
    source = build_backbone(BackboneConfig(name="mobilenetv2"), (None, None, 3))
    _randomize(source, seed=4)
    path = str(tmp_path / "mobilenetv2.weights.h5")
    source.save_weights(path)
    loaded = build_backbone(BackboneConfig(name="mobilenetv2", weights=path), (None, None, 3))
    for expected, actual in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_vgg16_loads_a_keras_notop_h5_file(tmp_path):
    # Keras' ImageNet files (vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5) are legacy HDF5 weight files
    # matched layer by layer in order; write one from a random VGG16 the way those were written.
    application = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, application)
    backbone = build_backbone(BackboneConfig(name="vgg16", weights=path), (32, 32, 3), pool_indices=True)
    for layer in (layer for layer in application.layers if layer.weights):
        for expected, actual in zip(layer.get_weights(), backbone.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(actual, expected)


def _recording_constructor(monkeypatch, constructor_name):
    """Stands in for a keras.applications constructor: records its kwargs, builds with weights=None."""
    real = getattr(keras.applications, constructor_name)
    calls = []

    def fake(**kwargs):
        model = real(**{**kwargs, "weights": None})
        calls.append((kwargs, model))
        return model

    monkeypatch.setattr(keras.applications, constructor_name, fake)
    return calls


def test_vgg16_imagenet_weights_are_copied_from_keras_applications(monkeypatch):
    calls = _recording_constructor(monkeypatch, "VGG16")
    backbone = build_backbone(BackboneConfig(name="vgg16", weights="imagenet"), (32, 32, 3), pool_indices=True)
    assert len(calls) == 1
    kwargs, donor = calls[0]
    assert kwargs["weights"] == "imagenet" and kwargs["include_top"] is False
    for stage in encoder_stages(backbone):
        for conv in stage:
            for expected, actual in zip(donor.get_layer(conv.name).get_weights(), conv.get_weights(), strict=True):
                np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(
    "name, constructor",
    [("resnet50", "ResNet50"), ("mobilenetv2", "MobileNetV2"), ("mobilenetv3large", "MobileNetV3Large")],
)
def test_application_imagenet_route_passes_weights(monkeypatch, name, constructor):
    calls = _recording_constructor(monkeypatch, constructor)
    backbone = build_backbone(BackboneConfig(name=name, weights="imagenet"), (32, 32, 3))
    assert len(calls) == 1
    kwargs, application = calls[0]
    assert kwargs["weights"] == "imagenet" and kwargs["include_top"] is False
    # The application was built on the backbone's normalized input: the backbone holds its very layers.
    assert kwargs["input_tensor"] is backbone.get_layer("normalize").output
    last = application.layers[-1]
    assert backbone.get_layer(last.name) is last


def test_mobilenetv3large_equals_the_application_with_its_own_preprocessing():
    # The backbone switches the application's Rescaling off and normalizes in "normalize" instead: with the
    # same weights, its last level must be the application's output on the raw pixels.
    backbone = build_backbone(BackboneConfig(name="mobilenetv3large"), (64, 64, 3))
    application = keras.applications.MobileNetV3Large(
        input_shape=(64, 64, 3), include_top=False, weights=None, include_preprocessing=True
    )
    ours = [layer for layer in backbone.layers if layer.weights]
    theirs = [layer for layer in application.layers if layer.weights]
    assert [layer.name for layer in ours] == [layer.name for layer in theirs]
    for source, target in zip(ours, theirs, strict=True):
        target.set_weights(source.get_weights())
    images = _images((2, 64, 64, 3))
    np.testing.assert_allclose(
        np.asarray(backbone(images)["level5"]), np.asarray(application(images)), rtol=1e-4, atol=1e-4
    )
    # Level 4 is the hard-swish of block 12's expansion (torchvision's SSDLite "C4"): 672 channels at stride 16.
    expand_bn = keras.Model(backbone.input, backbone.get_layer("expanded_conv_12_expand_bn").output)(images)
    expected = np.asarray(expand_bn) * np.clip(np.asarray(expand_bn) + 3.0, 0.0, 6.0) / 6.0
    np.testing.assert_allclose(np.asarray(backbone(images)["level4"]), expected, rtol=1e-4, atol=1e-4)
