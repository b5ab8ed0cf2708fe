"""Hyperparameter search: the `search:` config section, the hypermodel, the tuner set-up and `tfvision tune`
end to end on a tiny shapes data set (2 trials, then `tfvision train` on the config it writes)."""

import glob
import json
import os

import keras
import keras_tuner
import pytest
import tensorflow as tf
import yaml

from tfvision import cli
from tfvision import config as cfg
from tfvision.layers import MaxUnpooling2D, TiedConv2DTranspose
from tfvision.models import build_model
from tfvision.tuning import ExperimentHyperModel, build_tuner, run_search

SPACE = """\
search:
  objective: val_mean_iou
  space:
    train.learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}
    model.unet.base_filters: {type: choice, values: [4, 8]}
"""


def experiment(tmp_path, search=SPACE, name="e.yaml", model="unet"):
    """A tiny experiment YAML: 64-px shapes (24 train / 8 val images) generated into tmp_path on first use."""
    text = f"""\
name: tiny
data:
  root: {tmp_path / 'shapes'}
  image_size: 64
  batch_size: 4
  shapes: {{num_train: 24, num_val: 8, image_size: 64, seed: 3}}
model:
  name: {model}
  num_classes: 4
  unet: {{depth: 2, base_filters: 4}}
train:
  epochs: 1
  steps_per_epoch: 2
  schedule: constant
  learning_rate: 0.001
  model_dir: {tmp_path / 'run'}
{search}"""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the search: section -----------------------------------------------------------------------------------


def test_search_section_fills_the_schema(tmp_path):
    config = cfg.load_config(experiment(tmp_path, SPACE + "    data.include_masks: {type: boolean}\n"
                                        "    model.unet.depth: {type: int, min: 1, max: 3, step: 1}\n"))
    space = config.search.space
    assert list(space) == ["train.learning_rate", "model.unet.base_filters", "data.include_masks", "model.unet.depth"]
    assert space["train.learning_rate"] == cfg.SearchParamConfig("float", 1e-4, 1e-2, None, "log", None)
    assert space["model.unet.base_filters"].values == [4, 8]
    assert (space["model.unet.depth"].min, space["model.unet.depth"].max) == (1, 3)
    assert isinstance(space["model.unet.depth"].min, int)
    assert config.search.resolved_direction() == "max"
    # A config without the section has an empty one, and a saved config reloads unchanged.
    assert cfg.load_config(experiment(tmp_path, "", name="plain.yaml")).search == cfg.SearchConfig()
    cfg.save_config(config, str(tmp_path / "saved.yaml"))
    assert cfg.load_config(str(tmp_path / "saved.yaml")) == config


@pytest.mark.parametrize("entry, message", [
    # unknown paths, named in full, with a suggestion
    ("model.unet.base_filter: {type: choice, values: [4]}",
     r"'search.space\[\"model.unet.base_filter\"\]' names no config key: 'model.unet' has no key 'base_filter'.*"
     r"Did you mean 'base_filters'"),
    ("trian.learning_rate: {type: float, min: 0.1, max: 0.2}", r"'<top level>' has no key 'trian'"),
    ("train.learning_rate.x: {type: boolean}", r"'train.learning_rate' is a value"),
    ("model.unet: {type: choice, values: [1]}", r"is a section, not a value"),
    ("search.objective: {type: choice, values: [loss]}", r"cannot be searched"),
    ("train.decay_epochs: {type: choice, values: [[1]]}", r"holds a list, which cannot be searched"),
    # a wrong type in a choice, checked against the key's own type
    ("model.unet.base_filters: {type: choice, values: [8, sixteen]}",
     r"'search.space\[\"model.unet.base_filters\"\].values\[1\]' must be an integer, got 'sixteen'"),
    ("model.segnet.upsampling: {type: choice, values: [unpool, bilinear]}",
     r"values\[1\]' must be one of \['unpool', 'transpose', 'tied'\], got 'bilinear'"),
    ("model.unet.base_filters: {type: choice, values: []}", r"values' must be a non-empty list"),
    # bad ranges and options that do not fit the type
    ("train.learning_rate: {type: float, min: 1.0e-2, max: 1.0e-4}", r"min \(0.01\) must be below max \(0.0001\)"),
    ("train.learning_rate: {type: float, min: 0.0, max: 0.1, sampling: log}", r"log sampling needs min > 0"),
    ("train.learning_rate: {type: float, min: 0.1}", r"needs both min and max"),
    ("train.learning_rate: {type: float, min: 0.1, max: 0.2, values: [0.1]}",
     r"\.values' does not apply to type float"),
    ("model.unet.base_filters: {type: float, min: 4.0, max: 8.0}", r"type float does not fit.*use type choice"),
    ("model.unet.depth: {type: int, min: 1.5, max: 3}", r"\.min' must be an integer for type int"),
    ("data.batch_size: {type: boolean}", r"type boolean, but 'data.batch_size' is not true/false"),
    ("train.learning_rate: {min: 0.1, max: 0.2}", r"has no type"),
    ("train.learning_rate: {type: uniform}", r"type' must be one of \['float', 'int', 'choice', 'boolean'\]"),
    ("train.learning_rate: {type: float, mn: 0.1}", r"unknown key 'search.space\[\"train.learning_rate\"\].mn'"),
])
def test_bad_search_space_is_an_error_naming_the_entry(tmp_path, entry, message):
    path = experiment(tmp_path, f"search:\n  space:\n    {entry}\n")
    with pytest.raises(cfg.ConfigError, match=message) as error:
        cfg.load_config(path)
    assert str(error.value).startswith(path)  # and the file


def test_objective_direction_is_inferred_from_its_name_or_given():
    assert cfg.SearchConfig(objective="val_loss").resolved_direction() == "min"
    assert cfg.SearchConfig(objective="val_mean_iou").resolved_direction() == "max"
    assert cfg.SearchConfig(objective="val_pixel_accuracy").resolved_direction() == "max"
    assert cfg.SearchConfig(objective="val_loss", direction="max").resolved_direction() == "max"
    with pytest.raises(cfg.ConfigError, match="set search.direction to max or min"):
        cfg.from_dict(cfg.ExperimentConfig, {"search": {"objective": "val_score"}})
    config = cfg.from_dict(cfg.ExperimentConfig, {"search": {"objective": "val_score", "direction": "max"}})
    assert config.search.resolved_direction() == "max"


# -- the hypermodel -----------------------------------------------------------------------------------------


def conv_filters(model):
    return {layer.name: layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}


def test_hypermodel_builds_the_model_of_the_sampled_values(tmp_path):
    config = cfg.load_config(experiment(tmp_path, SPACE + "    model.unet.depth: {type: int, min: 1, max: 3}\n"))
    before = cfg.to_dict(config)
    hypermodel = ExperimentHyperModel(config)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("model.unet.base_filters", 8)
    hp.Fixed("model.unet.depth", 2)
    hp.Fixed("train.learning_rate", 0.005)
    model = hypermodel.build(hp)

    filters = conv_filters(model)
    # Hand-worked: depth 2 from 8 filters -> encoders 8, 16, bottleneck 32, decoders 16, 8, logits 5.
    assert (filters["encoder0_1_conv"], filters["encoder1_1_conv"], filters["bottleneck_1_conv"]) == (8, 16, 32)
    assert (filters["decoder1_1_conv"], filters["decoder0_1_conv"], filters["logits_conv"]) == (16, 8, 5)
    assert "encoder2_1_conv" not in filters
    # Reference: the model of a config edited by hand has the same layers and weight shapes.
    expected = cfg.from_dict(cfg.ExperimentConfig, before)
    expected.model.unet.base_filters, expected.model.unet.depth = 8, 2
    reference = build_model(expected)
    assert [w.shape for w in model.weights] == [w.shape for w in reference.weights]
    # Compiled as `tfvision train` compiles: the rate sampled, the segmentation loss and mIoU.
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)
    assert type(model.loss).__name__ == "SegmentationLoss"
    assert "val_mean_iou" in hypermodel.metric_names()
    assert cfg.to_dict(config) == before  # the base config is not touched


def test_hypermodel_fit_scores_the_averaged_weights(tmp_path):
    config = cfg.load_config(experiment(tmp_path), overrides=["train.ema_momentum=0.5", "train.epochs=2"])
    hypermodel = ExperimentHyperModel(config)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("model.unet.base_filters", 4)
    hp.Fixed("train.learning_rate", 0.005)
    model = hypermodel.build(hp)
    assert model.optimizer.use_ema
    history = hypermodel.fit(hp, model, verbose=0)
    # Training ends with the averaged weights in the model, and the score the tuner saw was theirs.
    _, val_ds = hypermodel.datasets(hypermodel.sample_config(hp))
    final = model.evaluate(val_ds, return_dict=True, verbose=0)
    assert final["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-4)


def test_sampled_config_is_a_plain_copy_and_unset_keys_take_their_defaults(tmp_path):
    config = cfg.load_config(experiment(tmp_path))
    hypermodel = ExperimentHyperModel(config)
    hp = keras_tuner.HyperParameters()
    sampled = hypermodel.sample_config(hp)
    # Keras Tuner's defaults: a float's minimum, a choice's first value.
    assert sampled.train.learning_rate == pytest.approx(1e-4)
    assert sampled.model.unet.base_filters == 4
    assert sampled.search == cfg.SearchConfig()
    assert config.train.learning_rate == 0.001 and config.search.space  # unchanged
    # Every space key is registered with its range.
    space = {p.name: p for p in hp.space}
    assert [type(space[k]).__name__ for k in ("train.learning_rate", "model.unet.base_filters")] == ["Float", "Choice"]
    assert (space["train.learning_rate"].min_value, space["train.learning_rate"].max_value,
            space["train.learning_rate"].sampling) == (1e-4, 1e-2, "log")
    assert list(space["model.unet.base_filters"].values) == [4, 8]
    # Another sample gives another config from the same base.
    hp2 = keras_tuner.HyperParameters()
    hp2.Fixed("model.unet.base_filters", 8)
    assert hypermodel.sample_config(hp2).model.unet.base_filters == 8
    assert hypermodel.sample_config(hp).model.unet.base_filters == 4


@pytest.mark.parametrize("mode, layer", [("tied", TiedConv2DTranspose), ("unpool", MaxUnpooling2D)])
def test_a_choice_of_names_picks_the_architecture(tmp_path, mode, layer):
    search = ("search:\n  space:\n    model.segnet.upsampling: {type: choice, values: [unpool, transpose, tied]}\n"
              "    model.backbone.width: {type: choice, values: [4, 8]}\n")
    hypermodel = ExperimentHyperModel(cfg.load_config(experiment(tmp_path, search, model="segnet")))
    hp = keras_tuner.HyperParameters()
    hp.Fixed("model.segnet.upsampling", mode)
    hp.Fixed("model.backbone.width", 4)
    model = hypermodel.build(hp)
    kinds = {type(l) for l in model.layers}
    assert layer in kinds
    assert model.name == f"segnet_{mode}"
    assert (TiedConv2DTranspose in kinds) == (mode == "tied")


# -- the tuner ----------------------------------------------------------------------------------------------


def test_build_tuner_sets_objective_strategy_and_algorithm(tmp_path):
    config = cfg.load_config(experiment(tmp_path))
    random = build_tuner(config, "random", max_trials=3, directory=str(tmp_path / "t1"))
    assert isinstance(random, keras_tuner.RandomSearch)
    assert random.oracle.objective.name == "val_mean_iou" and random.oracle.objective.direction == "max"
    assert random.oracle.max_trials == 3 and random.distribution_strategy is None
    assert os.path.isfile(tmp_path / "t1" / "search" / "experiment.yaml")

    config.train.epochs = 4
    config.search.objective = "val_loss"
    hyperband = build_tuner(config, "hyperband", max_trials=5, directory=str(tmp_path / "t2"))
    assert isinstance(hyperband, keras_tuner.Hyperband)
    assert (hyperband.oracle.max_epochs, hyperband.oracle.max_trials) == (4, 5)
    assert hyperband.oracle.objective.direction == "min"

    config.train.strategy = "mirrored"
    mirrored = build_tuner(config, "random", max_trials=1, directory=str(tmp_path / "t3"))
    assert isinstance(mirrored.distribution_strategy, tf.distribute.MirroredStrategy)


def test_tuner_errors_are_clear(tmp_path, capsys):
    config = cfg.load_config(experiment(tmp_path))
    with pytest.raises(ValueError, match="unknown tuner 'grid'; choose one of random, bayesian, hyperband"):
        build_tuner(config, "grid")
    with pytest.raises(ValueError, match="max_trials must be an integer >= 1"):
        build_tuner(config, "random", max_trials=0)
    config.search.objective = "val_accuracy"
    with pytest.raises(ValueError, match="'val_accuracy' is not logged.*val_mean_iou"):
        build_tuner(config, "random")
    config.search.objective, config.train.strategy = "val_loss", "multi_worker"
    with pytest.raises(ValueError, match="multi_worker"):
        build_tuner(config, "random")

    plain = experiment(tmp_path, "", name="plain.yaml")
    with pytest.raises(ValueError, match="has no search.space"):
        run_search(cfg.load_config(plain))
    assert cli.main(["tune", "--config", plain, "--max-trials", "1"]) == 1
    assert "has no search.space" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--config", plain, "--tuner", "grid"])
    assert exit_.value.code == 2
    assert "invalid choice: 'grid'" in capsys.readouterr().err


# -- tfvision tune, end to end ------------------------------------------------------------------------------


def trial_records(directory):
    """Keras Tuner's own record of each trial: {trial_id: (status, score, values)}."""
    records = {}
    for path in glob.glob(os.path.join(directory, "trial_*", "trial.json")):
        with open(path) as f:
            trial = json.load(f)
        records[trial["trial_id"]] = (trial["status"], trial["score"], trial["hyperparameters"]["values"])
    return records


@pytest.mark.slow
def test_tune_then_train_the_best_config(tmp_path, capsys):
    path = experiment(tmp_path)
    assert cli.main(["tune", "--config", path, "--tuner", "random", "--max-trials", "2"]) == 0
    printed = capsys.readouterr().out
    best_path = tmp_path / "run" / "best.yaml"
    assert f"wrote {best_path}" in printed

    # Two trials completed; the written values are those of the best-scoring one (val_mean_iou, max).
    records = trial_records(str(tmp_path / "run" / "tuning" / "search"))
    assert len(records) == 2 and all(status == "COMPLETED" for status, _, _ in records.values())
    best_score = max(score for _, score, _ in records.values())
    with open(best_path) as f:
        raw = yaml.safe_load(f)
    written = {"train.learning_rate": raw["train"]["learning_rate"],
               "model.unet.base_filters": raw["model"]["unet"]["base_filters"]}
    best_values = [values for _, score, values in records.values() if score == best_score and values == written]
    assert best_values, (written, records)  # (a tie on the score would allow either trial)
    best_values = best_values[0]
    assert f"val_mean_iou = {best_score:.4f} (max)" in printed
    assert f"model.unet.base_filters: {best_values['model.unet.base_filters']}" in printed

    # A plain experiment: no search section, the base config with the best values filled in.
    assert "search" not in raw
    best = cfg.load_config(str(best_path))
    expected = cfg.load_config(path)
    expected.search = cfg.SearchConfig()
    expected.train.learning_rate = best_values["train.learning_rate"]
    expected.model.unet.base_filters = best_values["model.unet.base_filters"]
    assert best == expected

    # Running it again continues the same search (nothing left to do); another config is refused.
    assert cli.main(["tune", "--config", path, "--max-trials", "2"]) == 0
    assert len(trial_records(str(tmp_path / "run" / "tuning" / "search"))) == 2
    capsys.readouterr()
    assert cli.main(["tune", "--config", path, "--max-trials", "2", "--set", "train.epochs=2"]) == 1
    assert "holds a search with another experiment config" in capsys.readouterr().err

    # `tfvision train` takes the written config as it is.
    assert cli.main(["train", "--config", str(best_path)]) == 0
    run = tmp_path / "run"
    assert cfg.load_config(str(run / "config.yaml")) == best
    trained = keras.models.load_model(str(run / "checkpoints" / "last.keras"))
    assert conv_filters(trained)["encoder0_1_conv"] == best_values["model.unet.base_filters"]
