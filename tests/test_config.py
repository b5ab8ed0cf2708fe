"""Config loading: YAML into dataclasses, strict keys, types, bases and overrides."""

import pytest

from tfvision import config as cfg


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_fills_the_schema(tmp_path):
    path = write(tmp_path, "e.yaml", "name: demo\ndata:\n  image_size: 64\n  shapes:\n    seed: 3\n")
    config = cfg.load_config(path)
    assert config.name == "demo"
    assert config.data.image_size == 64
    assert config.data.shapes.seed == 3
    assert config.data.batch_size == cfg.DataConfig().batch_size  # untouched default


def test_unknown_key_names_its_full_path(tmp_path):
    path = write(tmp_path, "e.yaml", "data:\n  shapes:\n    num_trian: 5\n")
    with pytest.raises(cfg.ConfigError, match=r"data\.shapes\.num_trian.*Did you mean 'num_train'"):
        cfg.load_config(path)


def test_wrong_types_are_errors(tmp_path):
    with pytest.raises(cfg.ConfigError, match="data.image_size' must be an integer"):
        cfg.load_config(write(tmp_path, "a.yaml", "data:\n  image_size: big\n"))
    with pytest.raises(cfg.ConfigError, match="data.include_masks' must be true or false"):
        cfg.load_config(write(tmp_path, "b.yaml", "data:\n  include_masks: 1\n"))
    with pytest.raises(cfg.ConfigError, match=r"data.source' must be one of \['shapes'"):
        cfg.load_config(write(tmp_path, "c.yaml", "data:\n  source: imagenet\n"))
    with pytest.raises(cfg.ConfigError, match="'data' must be a mapping"):
        cfg.load_config(write(tmp_path, "d.yaml", "data: 3\n"))


def test_yaml_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(write(tmp_path, "bad.yaml", "data: [1, 2\n"))
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load_config(str(tmp_path / "missing.yaml"))


def test_base_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "name: base\ndata:\n  image_size: 64\n  batch_size: 4\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: child\ndata:\n  batch_size: 8\n")
    config = cfg.load_config(child, overrides=["data.shapes.num_val=7", "data.include_masks=true"])
    assert (config.name, config.data.image_size, config.data.batch_size) == ("child", 64, 8)
    assert config.data.shapes.num_val == 7 and config.data.include_masks is True
    with pytest.raises(cfg.ConfigError, match="unknown key 'data.imagesize'"):
        cfg.load_config(child, overrides=["data.imagesize=3"])
    with pytest.raises(cfg.ConfigError, match="key=value"):
        cfg.load_config(child, overrides=["data.image_size"])


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(cfg.ConfigError, match="cycle"):
        cfg.load_config(str(tmp_path / "a.yaml"))


def test_save_and_reload_round_trip(tmp_path):
    config = cfg.load_config(write(tmp_path, "e.yaml", "name: x\ndata:\n  max_instances: 9\n"))
    out = str(tmp_path / "saved.yaml")
    cfg.save_config(config, out)
    assert cfg.load_config(out) == config
