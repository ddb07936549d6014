"""Config validation: every bad value fails at start-up naming its field."""

import importlib.util
import pathlib

import pytest

from kgmae_jax import config_lib
from tests import tiny_config

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_validates(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert "python -m kgmae_jax.main --config" in module.__doc__
  config = module.get_config()
  if config.data.name == "own_scene":  # Needs the user's file.
    config.data.scene = "cube.npy"
  config_lib.validate(config, num_devices=1, num_bands=218)


@pytest.mark.parametrize("field, value, message", [
    ("model.mask_ratio", 0.0, r"config.model.mask_ratio: must be in \(0, 1\)"),
    ("data.drop_bands", (3,), r"config.data.drop_bands: only own_scene"),
    ("model.mask_ratio", 1.0, r"config.model.mask_ratio: must be in \(0, 1\)"),
    ("lsmm.num_endmembers", 0, r"config.lsmm.num_endmembers: must be >= 1"),
    ("loss.huber", -0.1, r"config.loss.huber: must be >= 0"),
    ("loss.lsmm", -1.0, r"config.loss.lsmm: must be >= 0"),
    ("data.tile_size", 18, r"config.data.tile_size: 18 is not divisible by "
     r"model.patch_size=4; nearest valid tile sizes are \[16, 20\]"),
    ("model.patch_size", 0, r"config.model.patch_size: must be positive"),
    ("model.width", 30, r"config.model.width: 30 must be a multiple of 4"),
    ("model.dtype", "float16", r"config.model.dtype: one of"),
    ("lsmm.init", "nfindr", r"config.lsmm.init: one of"),
    ("lsmm.head", "patch", r"config.lsmm.head: one of"),
    ("lsmm.max_reflectance", -1.0, r"config.lsmm.max_reflectance: must be >= 0"),
    ("lsmm.lr_mult", 0.0, r"config.lsmm.lr_mult: must be > 0"),
    ("train.on_nonfinite", "ignore", r"config.train.on_nonfinite: one of"),
    ("train.steps", 0, r"config.train.steps: must be >= 1"),
    ("optim.lr", 0.0, r"config.optim.lr: must be positive"),
    ("evals.every_steps", -1, r"config.evals.every_steps: must be >= 0"),
])
def test_bad_values_name_the_field(field, value, message):
  config = tiny_config.get()
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_lsmm_weight_without_branch_and_all_zero_weights():
  config = tiny_config.get()
  config.lsmm.enabled = False
  with pytest.raises(ValueError, match=r"config.loss.lsmm: is > 0 but lsmm.enabled"):
    config_lib.validate(config)
  config.loss.huber = config.loss.sam = config.loss.lsmm = 0.0
  with pytest.raises(ValueError, match=r"config.loss: all loss weights are 0"):
    config_lib.validate(config)


def test_devices_and_bands():
  config = tiny_config.get()  # Batch 8.
  config_lib.validate(config, num_devices=8, num_bands=6)
  with pytest.raises(ValueError, match=r"config.train.batch_size: 8 is not divisible by "
                                       r"the 3 devices"):
    config_lib.validate(config, num_devices=3)
  config.mesh.fsdp = 3
  with pytest.raises(ValueError, match=r"config.mesh.fsdp: 3 does not divide the 8"):
    config_lib.validate(config, num_devices=8)
  config.mesh.fsdp = 1
  config.data.num_bands = 224
  with pytest.raises(ValueError, match=r"config.data.num_bands: the config expects 224 "
                                       r"bands but the data set has 218"):
    config_lib.validate(config, num_bands=218)


def test_unknown_field_is_refused():
  config = tiny_config.get()
  config.lock()  # As main.py loads configs (lock_config=True).
  with pytest.raises(AttributeError, match="stepz"):
    config.train.stepz = 3


# Configs with variants validate their own argument (tested below).
_WITH_VARIANTS = ("paper_tables", "karma_enmap")


@pytest.mark.parametrize("path", [p for p in CONFIGS
                                  if p.stem not in _WITH_VARIANTS],
                         ids=lambda p: p.stem)
def test_config_argument_typo_is_refused(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with pytest.raises(ValueError, match=rf"configs/{path.stem}.py takes no "
                     rf"':argument', got 'configs/{path.stem}.py:typo'"):
    module.get_config("typo")


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem in _WITH_VARIANTS],
                         ids=lambda p: p.stem)
def test_config_variant_typo_is_refused(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with pytest.raises(ValueError, match="typo"):
    module.get_config("typo")


def test_saved_config_without_new_fields_keeps_its_meaning():
  saved = tiny_config.get().to_dict()
  for key in ("head", "max_reflectance", "lr_mult", "init_pixels"):
    del saved["lsmm"][key]
  c = config_lib.from_saved(saved)
  assert (c.lsmm.head, c.lsmm.max_reflectance, c.lsmm.lr_mult) == ("token", 0.0, 1.0)
  assert config_lib.from_saved(tiny_config.get().to_dict()).lsmm.head == "pixel"


def test_model_presets():
  # 'paper' is base_config()'s size; 'tiny' is the quickstart's model, whose
  # numbers the README reports (changing it changes them).
  base = config_lib.base_config()
  assert config_lib.model_preset(config_lib.base_config(), "paper").to_dict() == (
      base.to_dict())
  c = config_lib.model_preset(config_lib.base_config(), "tiny")
  assert dict(c.model) == dict(base.model) | dict(
      patch_size=4, width=64, depth=2, num_heads=4, dec_width=64, dec_depth=1,
      dec_num_heads=4, mlp_ratio=2.0)
  with pytest.raises(ValueError, match="Unknown model preset 'huge'"):
    config_lib.model_preset(c, "huge")
