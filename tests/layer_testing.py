"""Shared check that a tfvision layer serializes: config round trip, same outputs, `.keras` save and reload.

Usage from a test file in `tests/`:

    from layer_testing import assert_serialization_round_trip

    def test_round_trip(tmp_path):
        assert_serialization_round_trip(MyLayer, {"units": 3}, np.ones((2, 8, 8, 3), "float32"),
                                        tmp_path=tmp_path)

(pytest puts `tests/` on `sys.path` because the test files there are not in a package.)
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import keras
import numpy as np


@contextlib.contextmanager
def dtype_policy(name):
    """Sets Keras' global dtype policy (e.g. "mixed_float16") inside the block and always restores the old one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _as_list(inputs):
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _config_json(config) -> str:
    # The JSON a .keras file would store; tuples and lists compare equal here, as they do after saving.
    return json.dumps(config, sort_keys=True)


def _default_model(layer, inputs) -> keras.Model:
    """Inputs with the arrays' shapes (batch left unknown) -> layer -> outputs."""
    arrays = _as_list(inputs)
    symbolic = [keras.Input(shape=np.shape(a)[1:], dtype=str(np.asarray(a).dtype)) for a in arrays]
    symbolic = symbolic if isinstance(inputs, (list, tuple)) else symbolic[0]
    return keras.Model(symbolic, layer(symbolic))


def _assert_outputs_close(actual, expected, rtol, atol, what):
    actual, expected = keras.tree.flatten(actual), keras.tree.flatten(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs instead of {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        a, e = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(e)
        assert a.dtype == e.dtype, f"{what}: output {i} has dtype {a.dtype}, expected {e.dtype}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{what}: output {i}")


def assert_serialization_round_trip(
    layer_cls, init_kwargs, inputs, *, build_model=None, tmp_path=None, rtol=1e-6, atol=1e-6
):
    """Asserts that a layer survives `get_config`/`from_config`, Keras serialization and `.keras` saving.

    Checks, in order:
    1. `get_config()` is JSON-serializable and holds every key of `init_kwargs` (explicit configs, no
       reliance on Keras auto-config); `from_config(config).get_config()` gives the same JSON.
    2. `keras.saving.serialize_keras_object` / `deserialize_keras_object` (the registered
       "tfvision>ClassName" lookup) gives the same config again.
    3. A model holding the original layer and one holding the `from_config` copy (weights copied over)
       give the same outputs on `inputs`.
    4. That model survives `model.save(path.keras)` + `keras.saving.load_model(path)` with equal outputs.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        inputs: a NumPy array, or a list of arrays for a multi-input layer (batch first).
        build_model: optional `fn(layer) -> keras.Model` for layers that need other layers around them
            (e.g. a tied decoder needs its encoder); it must build fresh surrounding layers on every call and
            the model must take `inputs`. Defaults to `keras.Input`s shaped like `inputs` -> layer.
        tmp_path: folder for the `.keras` file (pytest's `tmp_path`); a temporary folder if None.
        rtol, atol: output tolerances.

    Returns:
        The reloaded model, for further checks by the caller.
    """
    build_model = build_model or (lambda layer: _default_model(layer, inputs))
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    json.dumps(config)  # raises if anything in the config is not plain JSON
    missing = sorted(set(init_kwargs) - set(config))
    assert not missing, f"{layer_cls.__name__}.get_config() lacks init arguments {missing}"

    clone = layer_cls.from_config(config)
    assert _config_json(clone.get_config()) == _config_json(config), "from_config(get_config()) changed the config"

    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is layer_cls, f"deserialize_keras_object gave {type(revived).__name__}"
    assert _config_json(revived.get_config()) == _config_json(config), "Keras (de)serialization changed the config"

    model = build_model(layer)
    clone_model = build_model(clone)
    clone_model.set_weights(model.get_weights())
    expected = model(inputs)
    _assert_outputs_close(clone_model(inputs), expected, rtol, atol, "from_config copy")

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(tmp_path or scratch) / f"{layer_cls.__name__}_round_trip.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
    _assert_outputs_close(loaded(inputs), expected, rtol, atol, "reloaded model")
    return loaded
