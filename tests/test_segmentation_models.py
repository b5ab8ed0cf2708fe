"""Tests for the segmentation builders (FCN, SegNet-style encoder-decoders, U-Net), convert_dense_to_conv and
build_model: output shapes at fixed and unknown sizes, `.keras` round trips, bilinear initialisation,
unpooling with the encoder's indices, tied decoders, and the errors a user can cause."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvision.config import BackboneConfig, ExperimentConfig, FCNConfig, ModelConfig, SegNetConfig, UNetConfig
from tfvision.layers import MaxUnpooling2D, TiedConv2DTranspose
from tfvision.models import build_fcn, build_model, build_segnet, build_unet, convert_dense_to_conv
from tfvision.models.segmentation.common import ResizeLike
from layer_testing import assert_serialization_round_trip

NUM_CLASSES = 3
TINY = BackboneConfig(name="tiny", width=4)
CONFIGS = {
    "fcn32s": ModelConfig(name="fcn", num_classes=NUM_CLASSES, backbone=TINY, fcn=FCNConfig("32s")),
    "fcn16s": ModelConfig(name="fcn", num_classes=NUM_CLASSES, backbone=TINY, fcn=FCNConfig("16s")),
    "fcn8s": ModelConfig(name="fcn", num_classes=NUM_CLASSES, backbone=TINY, fcn=FCNConfig("8s")),
    "segnet_unpool": ModelConfig(name="segnet", num_classes=NUM_CLASSES, backbone=TINY, segnet=SegNetConfig("unpool")),
    "segnet_transpose": ModelConfig(
        name="segnet", num_classes=NUM_CLASSES, backbone=TINY, segnet=SegNetConfig("transpose")
    ),
    "segnet_tied": ModelConfig(name="segnet", num_classes=NUM_CLASSES, backbone=TINY, segnet=SegNetConfig("tied")),
    "unet_scratch": ModelConfig(name="unet", num_classes=NUM_CLASSES, unet=UNetConfig(depth=3, base_filters=4)),
    "unet_backbone": ModelConfig(
        name="unet", num_classes=NUM_CLASSES, backbone=TINY, unet=UNetConfig(depth=5, base_filters=4, use_backbone=True)
    ),
}
BUILDERS = {"fcn": build_fcn, "segnet": build_segnet, "unet": build_unet}


def _build(key, input_shape=(None, None, 3)):
    config = CONFIGS[key]
    return BUILDERS[config.name](config, input_shape=input_shape)


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def _assert_same_outputs(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.abs(expected).max() > 0 and np.std(expected) > 0, "outputs are constant: the check would be empty"
    # Relative to the output scale: untrained tiny models give small logits.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("key", list(CONFIGS))
def test_fixed_size_output_is_input_size_by_classes(key):
    model = _build(key, (64, 64, 3))
    assert tuple(model.output.shape) == (None, 64, 64, NUM_CLASSES + 1)
    logits = model.predict_on_batch(_images((2, 64, 64, 3)))
    assert logits.shape == (2, 64, 64, NUM_CLASSES + 1) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("key", list(CONFIGS))
def test_unknown_size_and_keras_round_trip(key, tmp_path):
    model = _build(key)
    assert tuple(model.output.shape) == (None, None, None, NUM_CLASSES + 1)
    # 64 is divisible by 32; 40 x 72 is not (pooled maps round), the output must still match the input.
    for height, width in [(64, 64), (40, 72)]:
        assert tuple(model(_images((1, height, width, 3))).shape) == (1, height, width, NUM_CLASSES + 1)

    images = _images((2, 48, 80, 3), seed=1)
    expected = model(images)
    path = tmp_path / f"{key}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    _assert_same_outputs(loaded(images), expected)
    if key == "segnet_tied":  # the reloaded decoder reuses the reloaded encoder's kernels
        backbone = loaded.get_layer("backbone")
        for k, j in [(5, 2), (3, 1), (1, 2)]:
            assert loaded.get_layer(f"decoder_block{k}_conv{j}").encoder_conv is backbone.get_layer(f"block{k}_conv{j}")


@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_strided_conv_backbone_output_matches_any_input_size(name):
    # MobileNetV2 rounds up where tiny rounds down (40 -> 20, 10, 5, 3, 2): the maps are resized to fit.
    config = ModelConfig(
        name=name,
        num_classes=NUM_CLASSES,
        backbone=BackboneConfig(name="mobilenetv2"),
        unet=UNetConfig(depth=5, base_filters=4, use_backbone=True),
    )
    model = BUILDERS[name](config)
    assert tuple(model(_images((1, 40, 72, 3))).shape) == (1, 40, 72, NUM_CLASSES + 1)


@pytest.mark.parametrize("key", ["fcn8s", "segnet_unpool", "segnet_tied", "unet_scratch"])
def test_logits_stay_float32_under_mixed_precision(key):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _build(key)
        logits = model(_images((1, 32, 32, 3)))
    finally:
        keras.config.set_dtype_policy("float32")
    assert logits.dtype == tf.float32
    assert model.get_layer("logits").input.dtype == "float16"  # the network itself ran in float16


@pytest.mark.parametrize("key", ["fcn8s", "segnet_unpool", "unet_backbone"])
def test_backbone_is_a_sub_model_the_trainer_can_freeze(key):
    model = _build(key)
    backbone = model.get_layer("backbone")
    assert isinstance(backbone, keras.Model) and backbone.trainable_weights
    total, in_backbone = len(model.trainable_weights), len(backbone.trainable_weights)
    backbone.trainable = False
    assert len(model.trainable_weights) == total - in_backbone > 0
    assert not any(w is v for w in model.trainable_weights for v in backbone.weights)


def test_resize_like_is_identity_at_equal_sizes_and_serializes(tmp_path):
    x = np.random.default_rng(3).normal(size=(2, 6, 5, 3)).astype("float32")
    # Unknown sizes take the dynamic path (tf.image.resize); at equal sizes it must not change a value.
    symbolic = [keras.Input((None, None, 3)), keras.Input((None, None, 1))]
    model = keras.Model(symbolic, ResizeLike()(symbolic))
    np.testing.assert_array_equal(np.asarray(model([x, np.zeros((2, 6, 5, 1), "float32")])), x)
    resized = np.asarray(model([x, np.zeros((2, 12, 9, 1), "float32")]))
    assert resized.shape == (2, 12, 9, 3)
    np.testing.assert_allclose(resized.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.3)  # same content, larger
    assert_serialization_round_trip(ResizeLike, {}, [x, np.zeros((2, 12, 9, 1), "float32")], tmp_path=tmp_path)


# --- FCN ---------------------------------------------------------------------------------------------------


def _numpy_bilinear(size):
    """FCN's upsample_filt (Long et al., surgery.py), written independently of tfvision."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def test_numpy_bilinear_reference_hand_worked():
    # Upsampling by 2 with a 4-tap kernel: 1-D weights 1/4, 3/4, 3/4, 1/4.
    np.testing.assert_allclose(_numpy_bilinear(4), np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))


def test_fcn_upsampling_kernels_start_bilinear():
    model = _build("fcn8s")
    channels = NUM_CLASSES + 1
    for name, size in [("upsample_level5", 4), ("upsample_level4", 4), ("upsample_final", 16)]:
        layer = model.get_layer(name)
        assert isinstance(layer, keras.layers.Conv2DTranspose) and layer.trainable and not layer.use_bias
        kernel = np.asarray(layer.kernel)
        assert kernel.shape == (size, size, channels, channels)
        for i in range(channels):
            for j in range(channels):
                expected = _numpy_bilinear(size) if i == j else np.zeros((size, size))
                np.testing.assert_allclose(kernel[:, :, i, j], expected, atol=1e-7)


@pytest.mark.parametrize("name, factor", [("upsample_level5", 2), ("upsample_final", 8)])
def test_fcn_upsampling_equals_bilinear_resize_away_from_borders(name, factor):
    layer = _build("fcn8s").get_layer(name)
    scores = np.random.default_rng(2).normal(size=(1, 6, 5, NUM_CLASSES + 1)).astype("float32")
    upsampled = np.asarray(layer(scores))
    resized = np.asarray(tf.image.resize(scores, (6 * factor, 5 * factor), method="bilinear"))
    assert upsampled.shape == resized.shape
    # Borders differ (zero padding vs edge clamping); inside, the transposed conv is bilinear interpolation.
    inner = slice(factor, -factor)
    np.testing.assert_allclose(upsampled[:, inner, inner], resized[:, inner, inner], atol=1e-5)


@pytest.mark.parametrize("variant, fused", [("32s", ()), ("16s", (4,)), ("8s", (4, 3))])
def test_fcn_variants_fuse_the_documented_levels(variant, fused):
    model = _build(f"fcn{variant}")
    names = {layer.name for layer in model.layers}
    for level in (4, 3):
        assert (f"fuse_level{level}" in names) == (level in fused)
        if level in fused:  # skip score layers start at zero: the fused net starts as the coarser net
            assert not np.asarray(model.get_layer(f"score_level{level}").kernel).any()
    final = model.get_layer("upsample_final")
    assert final.strides == (2 ** min((5,) + fused),) * 2


def test_fcn_unknown_variant():
    config = dataclasses.replace(CONFIGS["fcn8s"], fcn=FCNConfig(variant="4s"))
    with pytest.raises(ValueError, match=r"model.fcn.variant: must be one of \['32s', '16s', '8s'\]"):
        build_fcn(config)


# --- convert_dense_to_conv ---------------------------------------------------------------------------------


def test_convert_dense_to_conv_hand_worked():
    # A 2x2x1 image, Flatten, Dense(1) with weights 1, 2, 3, 4 and bias 0.5: the kernel [[1, 2], [3, 4]]
    # slides over a 3x3 image 1..9, e.g. top left: 1*1 + 2*2 + 4*3 + 5*4 + 0.5 = 37.5.
    classifier = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    classifier.layers[-1].set_weights([np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([0.5])])
    converted = convert_dense_to_conv(classifier)
    image = np.arange(1, 10, dtype="float32").reshape(1, 3, 3, 1)
    np.testing.assert_allclose(np.asarray(converted(image))[0, :, :, 0], [[37.5, 47.5], [67.5, 77.5]])


def _small_classifiers():
    """Small classifiers on 16x16x3 images (total stride 4 before Flatten), built three ways, by kind."""
    keras.utils.set_random_seed(4)
    sequential = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(5, activation="softmax"),
        ],
        name="sequential_classifier",
    )
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dense(5)(x)
    x = keras.layers.Softmax()(x)
    functional = keras.Model(inputs, x, name="functional_classifier")
    for layer in functional.layers:  # non-trivial BatchNorm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(5)
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    features = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 5, strides=4, padding="same", activation="tanh")],
        name="features",
    )
    nested = keras.Sequential(
        [keras.Input((16, 16, 3)), features, keras.layers.Flatten(), keras.layers.Dense(5)], name="nested_classifier"
    )
    return {"sequential": sequential, "functional": functional, "nested": nested}


@pytest.mark.parametrize("kind", ["sequential", "functional", "nested"])
def test_convert_dense_to_conv_small_classifiers(kind):
    classifier = _small_classifiers()[kind]
    converted = convert_dense_to_conv(classifier)
    assert tuple(converted.input_shape) == (None, None, None, 3)

    images = _images((3, 16, 16, 3)) / 255.0
    expected = np.asarray(classifier(images))
    actual = np.asarray(converted(images))
    assert actual.shape == (3, 1, 1, 5)
    np.testing.assert_allclose(actual[:, 0, 0], expected, rtol=1e-5, atol=1e-6)

    # On a 24x28 image the classifier slides with its features' stride (4): (24 - 16) / 4 + 1 by
    # (28 - 16) / 4 + 1 positions. (Window by window equality: see the padding-free test below.)
    heat_map = np.asarray(converted(_images((1, 24, 28, 3), seed=6) / 255.0))
    assert heat_map.shape == (1, 3, 4, 5)
    if kind != "nested":  # those two end in a softmax: over the channel axis
        np.testing.assert_allclose(heat_map.sum(axis=-1), 1.0, rtol=1e-5)


def test_convert_dense_to_conv_slides_the_classifier():
    # No padding anywhere, so each heat map cell is exactly the classifier on one window of the large image.
    keras.utils.set_random_seed(7)
    classifier = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),  # 10x10
            keras.layers.MaxPooling2D(),  # 5x5, stride 2
            keras.layers.Flatten(),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    converted = convert_dense_to_conv(classifier)
    large = _images((2, 18, 16, 3), seed=8) / 255.0
    heat_map = np.asarray(converted(large))
    assert heat_map.shape == (2, 4, 3, 3)  # ((18 - 12) / 2 + 1, (16 - 12) / 2 + 1)
    for i in range(4):
        for j in range(3):
            window = large[:, 2 * i : 2 * i + 12, 2 * j : 2 * j + 12]
            np.testing.assert_allclose(heat_map[:, i, j], np.asarray(classifier(window)), rtol=1e-5, atol=1e-6)


def test_converted_model_shares_no_variables():
    classifier = _small_classifiers()["sequential"]
    converted = convert_dense_to_conv(classifier)
    images = _images((1, 16, 16, 3)) / 255.0
    before = np.asarray(converted(images))
    classifier.set_weights([w * 0 for w in classifier.get_weights()])
    np.testing.assert_array_equal(np.asarray(converted(images)), before)


def test_convert_dense_to_conv_errors():
    pooled = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="no Flatten layer"):
        convert_dense_to_conv(pooled)
    inputs = keras.Input((8, 8, 3))
    branch = keras.layers.Add()([keras.layers.Conv2D(3, 3, padding="same")(inputs), inputs])
    residual = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(branch)))
    with pytest.raises(ValueError, match="takes several inputs"):
        convert_dense_to_conv(residual)
    no_dense = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dropout(0.1)])
    with pytest.raises(ValueError, match="no Dense layer after Flatten"):
        convert_dense_to_conv(no_dense)


def test_convert_vgg16_same_scores_at_224_and_6x6_heat_map_at_384():
    keras.utils.set_random_seed(9)
    vgg16 = keras.applications.VGG16(include_top=True, weights=None)
    converted = convert_dense_to_conv(vgg16)
    assert converted.get_layer("fc1").kernel.shape == (7, 7, 512, 4096)
    assert converted.get_layer("fc2").kernel.shape == (1, 1, 4096, 4096)

    image = keras.applications.vgg16.preprocess_input(_images((1, 224, 224, 3), seed=10))
    expected = vgg16.predict_on_batch(image)
    assert expected.max() > 2 * expected.min()  # far from uniform, so a wrong conversion could not hide
    actual = converted.predict_on_batch(image)
    assert actual.shape == (1, 1, 1, 1000)
    np.testing.assert_allclose(actual[:, 0, 0], expected, atol=1e-4, rtol=1e-3)

    heat_map = converted.predict_on_batch(keras.applications.vgg16.preprocess_input(_images((1, 384, 384, 3))))
    assert heat_map.shape == (1, 6, 6, 1000)  # 384 / 32 = 12 pool5 cells, 7x7 fc1 kernel: 12 - 7 + 1
    np.testing.assert_allclose(heat_map.sum(axis=-1), 1.0, rtol=1e-4)


# --- SegNet ------------------------------------------------------------------------------------------------


def test_segnet_unpool_uses_the_encoder_indices():
    model = _build("segnet_unpool")
    # Random BatchNorm statistics so that encoder maps are not mostly ReLU zeros.
    rng = np.random.default_rng(11)
    for layer in model.get_layer("backbone").layers + model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    unpools = [model.get_layer(f"decoder_block{k}_unpool") for k in range(5, 0, -1)]
    assert all(isinstance(layer, MaxUnpooling2D) for layer in unpools)
    probe = keras.Model(model.input, [[*layer.input, layer.output] for layer in unpools])
    images = _images((2, 40, 56, 3), seed=12)
    features = model.get_layer("backbone")(images)
    probed = probe(images)
    for k, (values, indices, like, unpooled) in zip(range(5, 0, -1), probed):
        values, indices, unpooled = (np.asarray(t) for t in (values, indices, unpooled))
        np.testing.assert_array_equal(indices, np.asarray(features[f"indices{k}"]))  # the encoder's own indices
        assert unpooled.shape == tuple(like.shape) == tuple(features[f"prepool{k}"].shape)
        expected = np.zeros(unpooled.size, np.float32)
        np.add.at(expected, indices.ravel(), values.ravel())  # NumPy max unpooling
        np.testing.assert_allclose(unpooled.ravel(), expected, rtol=1e-6)
        off_argmax = np.ones(unpooled.size, bool)
        off_argmax[indices.ravel()] = False
        assert off_argmax.mean() >= 0.74 and not unpooled.ravel()[off_argmax].any()  # 3 of 4 positions are zero
    # Stage 5 unpools the encoder's own maxima: each one goes back where it came from.
    prepool5 = np.asarray(features["prepool5"])
    unpooled5 = np.asarray(probed[0][3])
    kept = unpooled5 != 0
    assert kept.any()
    np.testing.assert_array_equal(unpooled5[kept], prepool5[kept])


def test_segnet_decoder_mirrors_the_encoder():
    for key in ["segnet_unpool", "segnet_transpose", "segnet_tied"]:
        model = _build(key)
        backbone = model.get_layer("backbone")
        for k in range(1, 6):
            for j in (1, 2):
                if (k, j) == (1, 1):  # the mirror of the first conv is the classifier
                    assert model.get_layer("logits_conv").filters == NUM_CLASSES + 1
                    continue
                encoder_conv = backbone.get_layer(f"block{k}_conv{j}")
                decoder_conv = model.get_layer(f"decoder_block{k}_conv{j}")
                assert decoder_conv.output.shape[-1] == encoder_conv.input.shape[-1]
                if key == "segnet_tied":
                    assert isinstance(decoder_conv, TiedConv2DTranspose)
                    assert decoder_conv.encoder_conv is encoder_conv and not decoder_conv.weights
                else:
                    assert isinstance(decoder_conv, keras.layers.Conv2D) and decoder_conv.kernel.shape[:2] == (3, 3)


def test_segnet_errors():
    config = dataclasses.replace(CONFIGS["segnet_unpool"], segnet=SegNetConfig(upsampling="bilinear"))
    with pytest.raises(ValueError, match=r"model.segnet.upsampling: must be one of \['unpool', 'transpose', 'tied'\]"):
        build_segnet(config)
    for name in ["resnet50", "mobilenetv2"]:
        config = dataclasses.replace(CONFIGS["segnet_transpose"], backbone=BackboneConfig(name=name))
        with pytest.raises(ValueError, match="plain conv/max-pool encoder \\(tiny, vgg16\\)"):
            build_segnet(config)


# --- U-Net -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unpool", "transpose", "tied"])
def test_segnet_stages_mirror_only_the_kept_encoder_stages(mode):
    # 3 stages: the deepest map is stride 8 (a 2 x 2 grid at 64 px with all 5 stages, 8 x 8 with 3).
    config = dataclasses.replace(CONFIGS[f"segnet_{mode}"], segnet=SegNetConfig(mode, stages=3))
    model = build_segnet(config)
    backbone = model.get_layer("backbone")
    expected_keys = [f"level{k}" for k in (1, 2, 3)]
    if mode != "transpose":
        expected_keys += [f"{key}{k}" for key in ("indices", "prepool") for k in (1, 2, 3)]
    assert sorted(backbone.output) == sorted(expected_keys)
    names = {layer.name for layer in model.layers} | {layer.name for layer in backbone.layers}
    assert "block3_conv2" in names and not {"block4_conv1", "decoder_block4_conv1"} & names
    upsample = "upconv" if mode == "transpose" else "unpool"
    assert [layer.name for layer in model.layers if layer.name.endswith(upsample)] == [
        f"decoder_block{k}_{upsample}" for k in (3, 2, 1)
    ]
    images = _images((2, 40, 56, 3), seed=13)
    features = backbone(images)
    # The decoder starts from the stage-3 map, at 1/8 of the image (TINY width 4: 4 * 2**2 channels).
    first = model.get_layer(f"decoder_block3_{upsample}")
    assert tuple(features["level3"].shape) == (2, 5, 7, 16)
    probe = keras.Model(model.input, [first.input if mode == "transpose" else first.input[0], model.output])
    decoder_input, logits = probe(images)
    np.testing.assert_array_equal(np.asarray(decoder_input), np.asarray(features["level3"]))
    assert tuple(logits.shape) == (2, 40, 56, NUM_CLASSES + 1)
    for k in (1, 2, 3):
        for j in (1, 2):
            if (k, j) != (1, 1):
                assert model.get_layer(f"decoder_block{k}_conv{j}").output.shape[-1] == (
                    backbone.get_layer(f"block{k}_conv{j}").input.shape[-1]
                )


def test_segnet_default_is_the_five_stage_vgg16_segnet():
    assert SegNetConfig() == SegNetConfig(upsampling="unpool", stages=5, decoder_kernel_size=3)
    config = ModelConfig(name="segnet", num_classes=NUM_CLASSES, backbone=BackboneConfig(name="vgg16"))
    model = build_segnet(config, input_shape=(64, 64, 3))
    unpools = [layer for layer in model.layers if isinstance(layer, MaxUnpooling2D)]
    assert [layer.name for layer in unpools] == [f"decoder_block{k}_unpool" for k in range(5, 0, -1)]
    decoder_convs = [
        layer for layer in model.layers if layer.name.startswith("decoder_block") and "_conv" in layer.name
    ]
    # VGG16's 13 convs mirrored, the first one's mirror being the classifier: 512 ... 64 channels back.
    assert [layer.filters for layer in decoder_convs] == [512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64]
    assert all(layer.kernel_size == (3, 3) for layer in decoder_convs)
    assert tuple(model.output.shape) == (None, 64, 64, NUM_CLASSES + 1)


def test_segnet_decoder_kernel_size():
    segnet = SegNetConfig("unpool", stages=2, decoder_kernel_size=7)
    config = dataclasses.replace(CONFIGS["segnet_unpool"], segnet=segnet)
    model = build_segnet(config)
    convs = [model.get_layer(name) for name in ["decoder_block2_conv2", "decoder_block2_conv1", "decoder_block1_conv2"]]
    assert all(conv.kernel_size == (7, 7) for conv in convs)
    assert model.get_layer("backbone").get_layer("block1_conv1").kernel_size == (3, 3)  # the encoder is untouched
    assert model.predict_on_batch(_images((1, 32, 48, 3))).shape == (1, 32, 48, NUM_CLASSES + 1)


@pytest.mark.parametrize(
    "segnet, match",
    [
        (SegNetConfig("unpool", stages=0), r"model.segnet.stages: must be an integer in 1..5.*got 0"),
        (SegNetConfig("unpool", stages=6), r"model.segnet.stages: must be an integer in 1..5.*got 6"),
        (SegNetConfig("unpool", stages=True), r"model.segnet.stages: .*got True"),
        (SegNetConfig("unpool", decoder_kernel_size=4), r"model.segnet.decoder_kernel_size: must be an odd .*got 4"),
        (SegNetConfig("tied", decoder_kernel_size=5), r"model.segnet.decoder_kernel_size: the 'tied' decoder"),
    ],
)
def test_segnet_stage_and_kernel_errors(segnet, match):
    with pytest.raises(ValueError, match=match):
        build_segnet(dataclasses.replace(CONFIGS["segnet_unpool"], segnet=segnet))

def test_unet_from_scratch_concatenates_skips_at_every_scale():
    model = _build("unet_scratch", (32, 32, 3))
    for k in range(3):  # depth 3: decoder stages at strides 4, 2, 1
        size, filters = 32 // 2**k, 4 * 2**k
        upsampled, skip = model.get_layer(f"decoder{k}_concat").input
        assert tuple(upsampled.shape) == tuple(skip.shape) == (None, size, size, filters)
        assert skip is model.get_layer(f"encoder{k}_2_relu").output
    assert tuple(model.get_layer("bottleneck_2_relu").output.shape) == (None, 4, 4, 32)


def test_unet_on_backbone_uses_its_levels_as_skips():
    model = _build("unet_backbone", (64, 64, 3))
    for k in range(1, 5):
        upsampled, skip = model.get_layer(f"decoder{k}_concat").input
        assert tuple(skip.shape) == (None, 64 // 2**k, 64 // 2**k, 4 * 2 ** min(k - 1, 3))  # tiny level k
        assert upsampled.shape[1:3] == skip.shape[1:3]
    assert "decoder0_concat" not in {layer.name for layer in model.layers}  # no stride-1 backbone level


def test_unet_errors():
    base = CONFIGS["unet_backbone"]
    with pytest.raises(ValueError, match="model.unet.depth: must be an integer >= 1 and at most 5"):
        build_unet(dataclasses.replace(base, unet=UNetConfig(depth=6, use_backbone=True)))
    with pytest.raises(ValueError, match="model.unet.base_filters"):
        build_unet(dataclasses.replace(base, unet=UNetConfig(base_filters=0)))
    with pytest.raises(ValueError, match="model.num_classes"):
        build_unet(dataclasses.replace(base, num_classes=0))
    with pytest.raises(ValueError, match="input_shape must be"):
        build_unet(CONFIGS["unet_scratch"], input_shape=(4, 4, 3))


# --- build_model -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, model_name", [("fcn16s", "fcn_16s"), ("segnet_tied", "segnet_tied"), ("unet_scratch", "unet")]
)
def test_build_model_dispatches_on_name(key, model_name):
    model = build_model(ExperimentConfig(model=CONFIGS[key]))
    assert model.name == model_name
    assert tuple(model.input_shape) == (None, None, None, 3)


def test_build_model_errors():
    config = ExperimentConfig(model=dataclasses.replace(CONFIGS["fcn8s"], name="deeplab"))
    valid = "fast_rcnn, faster_rcnn, fcn, mask_rcnn, overfeat, rcnn, segnet, ssd, unet, yolo"
    with pytest.raises(ValueError, match=f"unknown model 'deeplab'; valid models: {valid}"):
        build_model(config)
    config = ExperimentConfig(model=dataclasses.replace(CONFIGS["fcn8s"], backbone=BackboneConfig(name="vgg19")))
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        build_model(config)
