"""Hyperparameter search with Keras Tuner over the `search.space` keys of an experiment config.

`ExperimentHyperModel` (hypermodel.py) turns a config into trials; `run_search` (search.py) runs a tuner over
them and writes the best trial's config for `tfvision train`.
"""

from tfvision.tuning.hypermodel import ExperimentHyperModel, task_parts
from tfvision.tuning.search import TUNERS, SearchResult, build_tuner, run_search, save_best_config
