"""`tfvision tune`: a Keras Tuner search over an experiment's `search.space`, ending in a trainable config.

`run_search` runs Random search, Bayesian optimization or Hyperband on `ExperimentHyperModel` trials, keeps the
tuner's state in `<train.model_dir>/tuning/`, and writes the best trial's config as plain YAML (no `search:`
section, every searched key set to the best trial's value) that `tfvision train --config` takes.

Running it again on the same folder continues the search (more trials with a larger `max_trials`), as Keras
Tuner does; if the config or tuner changed since, that is an error unless `overwrite=True` starts afresh,
because Keras Tuner would otherwise silently report the old search's best trial.

Example:
    result = run_search(load_config("configs/shapes/unet.yaml"), tuner="bayesian", max_trials=20)
    print(result.values, result.score, result.config_path)
"""

from __future__ import annotations

import dataclasses
import os

import keras
import keras_tuner
import yaml

from tfvision.config import ExperimentConfig, to_dict
from tfvision.tuning.hypermodel import ExperimentHyperModel

TUNERS = {
    "random": keras_tuner.RandomSearch,
    "bayesian": keras_tuner.BayesianOptimization,
    "hyperband": keras_tuner.Hyperband,
}
PROJECT = "search"  # the tuner's project folder inside the tuning directory
RECORD = "experiment.yaml"  # what was searched, beside the tuner's own state


@dataclasses.dataclass
class SearchResult:
    """The best trial of a search.

    Attributes:
        config: its experiment config (no search section).
        values: `{space key: value}` of the best trial.
        score: its objective value (the best over its epochs).
        objective: the objective's name; `direction`: `min` or `max`.
        config_path: where `config` was written as YAML.
        num_trials: trials that completed.
    """

    config: ExperimentConfig
    values: dict
    score: float
    objective: str
    direction: str
    config_path: str
    num_trials: int


def run_search(
    config: ExperimentConfig,
    tuner: str = "random",
    max_trials: int = 10,
    directory: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    verbose="auto",
) -> SearchResult:
    """Searches `config.search.space` and writes the best trial's config.

    Args:
        config: experiment with a `search` section (see `build_tuner` for how it sets up the tuner).
        tuner: `random`, `bayesian` or `hyperband`.
        max_trials: number of trials (models trained), >= 1.
        directory: the tuner's folder; default `<train.model_dir>/tuning`.
        out: the best config's YAML file; default `<train.model_dir>/best.yaml`.
        overwrite: start a new search even if `directory` holds one of another config or tuner.
        verbose: Keras verbosity of each trial's `fit`.

    Returns:
        `SearchResult` of the best trial.

    Raises:
        ValueError: see `build_tuner`; also a data folder that cannot be loaded.
        RuntimeError: no trial completed (Keras Tuner stops after 3 failing in a row; its log says why).
    """
    search_tuner = build_tuner(config, tuner, max_trials, directory, overwrite)
    hypermodel = search_tuner.hypermodel
    # Load the data once before any trial: a missing folder is then one clear error, not three failed trials.
    hypermodel.datasets(hypermodel.sample_config(keras_tuner.HyperParameters()))
    directory = search_tuner.directory
    search_tuner.search(
        callbacks=[keras.callbacks.TerminateOnNaN(), keras.callbacks.TensorBoard(os.path.join(directory, "logs"))],
        verbose=verbose,
    )

    best_trials = search_tuner.oracle.get_best_trials(1)
    if not best_trials:
        raise RuntimeError(f"no trial of the search in {directory} completed; see the errors above.")
    best = best_trials[0]
    values = hypermodel.sample(best.hyperparameters.copy())
    best_config = hypermodel.sample_config(best.hyperparameters)
    search = config.search
    direction = search.resolved_direction()
    num_trials = sum(t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
                     for t in search_tuner.oracle.trials.values())
    out = out or os.path.join(config.train.model_dir, "best.yaml")
    header = (
        f"Best of {num_trials} trial(s) of `tfvision tune --tuner {tuner}` on experiment '{config.name}' "
        f"(trial_{best.trial_id}): {search.objective} = {best.score:.6g} ({direction}).\n"
        "Searched keys: " + ", ".join(f"{k}={v!r}" for k, v in values.items())
    )
    save_best_config(best_config, out, header)
    return SearchResult(best_config, values, float(best.score), search.objective, direction, out, num_trials)


def build_tuner(
    config: ExperimentConfig,
    tuner: str = "random",
    max_trials: int = 10,
    directory: str | None = None,
    overwrite: bool = False,
) -> keras_tuner.Tuner:
    """The Keras Tuner tuner of a search over `config.search.space`, on an `ExperimentHyperModel`.

    Args:
        config: experiment with a `search` section: `search.objective` and its direction pick the best trial,
            `train.strategy` (if not `default`) becomes the tuner's `distribution_strategy`, `train.seed`
            seeds the tuner.
        tuner: `random` (`keras_tuner.RandomSearch`), `bayesian` (`BayesianOptimization`; needs scipy and
            scikit-learn, `pip install keras-tuner[bayesian]`) or `hyperband` (`Hyperband` with
            `max_epochs = train.epochs`).
        max_trials: number of trials, >= 1; for Hyperband, a cap on the trials of its brackets.
        directory: the tuner's folder; default `<train.model_dir>/tuning` (its state is in `search/` there).
        overwrite: start afresh even if `directory` holds a search; without it, a search of the same config and
            tuner is continued, and one of another is an error.

    Raises:
        ValueError: no `search.space`, an unknown tuner, `max_trials` < 1, an objective that training does
            not log, a `multi_worker` strategy, or `directory` holding a different search (without overwrite).
    """
    from tfvision.training.strategy import create_strategy

    if tuner not in TUNERS:
        raise ValueError(f"unknown tuner {tuner!r}; choose one of {', '.join(TUNERS)}.")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"max_trials must be an integer >= 1, got {max_trials!r}.")
    hypermodel = ExperimentHyperModel(config)  # checks that there is a search space
    search = config.search
    names = hypermodel.metric_names()
    if search.objective not in names:
        raise ValueError(
            f"search.objective '{search.objective}' is not logged when training model.name "
            f"'{config.model.name}'; choose one of {', '.join(names)}."
        )
    if config.train.strategy == "multi_worker":
        # Each worker would run its own tuner and sample other trials; Keras Tuner spreads a search over
        # machines with its own chief/worker processes (KERASTUNER_* environment variables) instead.
        raise ValueError(
            "train.strategy 'multi_worker' cannot drive a search: use 'default' or 'mirrored' per machine, and "
            "Keras Tuner's distributed tuning to spread trials over machines."
        )
    directory = directory or os.path.join(config.train.model_dir, "tuning")
    record_path = os.path.join(directory, PROJECT, RECORD)
    record = {"tuner": tuner, "experiment": to_dict(config)}
    _check_same_search(record_path, record, overwrite)
    kwargs = dict(
        hypermodel=hypermodel,
        objective=keras_tuner.Objective(search.objective, search.resolved_direction()),
        directory=directory,
        project_name=PROJECT,
        overwrite=overwrite,
        distribution_strategy=None if config.train.strategy == "default" else create_strategy(config.train.strategy),
        seed=config.train.seed + 1,  # Keras Tuner takes seed 0 to mean "pick one at random"
    )
    if tuner == "hyperband":
        built = keras_tuner.Hyperband(max_epochs=config.train.epochs, **kwargs)
        built.oracle.max_trials = max_trials  # Hyperband takes no max_trials argument; its oracle honours one
    else:
        built = TUNERS[tuner](max_trials=max_trials, **kwargs)
    _write_yaml(record_path, record)
    return built


def save_best_config(config: ExperimentConfig, path: str, header: str = "") -> None:
    """Writes `config` as a plain experiment YAML (no `search:` section), atomically.

    Args:
        header: text written first as `#` comment lines.
    """
    data = to_dict(config)
    data.pop("search", None)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    _write_yaml(path, data, comment)


def _check_same_search(path: str, record: dict, overwrite: bool) -> None:
    """Refuses to continue a search in a folder that holds one of another config or tuner."""
    if overwrite or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        previous = yaml.safe_load(f)
    if previous != yaml.safe_load(yaml.safe_dump(record)):  # compare as written (tuples become lists)
        what = "tuner" if previous.get("tuner") != record["tuner"] else "experiment config"
        raise ValueError(
            f"{os.path.dirname(path)} holds a search with another {what} (see {path}); continuing it would mix "
            "trials of different searches. Pass --overwrite (overwrite=True) to start over, or set another "
            "train.model_dir."
        )


def _write_yaml(path: str, data: dict, comment: str = "") -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(comment)
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)
