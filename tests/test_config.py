"""The typed config: building, overrides, validation errors that name the key, documentation of every field."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import yaml

from knnmix import config as C
from knnmix.errors import ConfigError


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = C.from_dict({})
    path = tmp_path / "c.yaml"
    path.write_text(C.to_yaml(cfg))
    assert C.load(path) == cfg


def test_file_then_shorthands_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  k: 3\nepochs: 7\nseed: 1\n")
    cfg = C.load(path, ["method.k=5", "optim.lr=1e-3"], **{"epochs": 9, "seed": None})
    assert cfg.method.k == 5  # override beats file
    assert cfg.epochs == 9  # shorthand beats file
    assert cfg.seed == 1  # a shorthand left out (None) keeps the file's value
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; a float field accepts it


def test_flatten_gives_dotted_keys_for_mlflow():
    flat = C.flatten(C.from_dict({}))
    assert flat["method.k"] == 1
    assert flat["data.name"] == "digits"
    assert all(not isinstance(v, dict) for v in flat.values())


def test_differences_name_the_changed_keys_except_the_ignored_ones():
    old = C.to_dict(C.from_dict({}))
    new = C.to_dict(C.replace(C.from_dict({}), **{"method.k": 3, "epochs": 7, "distributed.workers": 2,
                                                  "optim.lr": 0.1}))
    assert C.differences(old, old, 3) == ""
    assert C.differences(old, new, 3) == "distributed.workers: 0 -> 2, epochs: 100 -> 7, method.k: 1 -> 3"
    assert C.differences(old, new, 1, ("epochs", "distributed.")) == "method.k: 1 -> 3"
    assert C.differences(old, new, 4, ("epochs", "distributed.")) == "method.k: 1 -> 3, optim.lr: 0.05 -> 0.1"


def test_replace_validates():
    cfg = C.from_dict({})
    assert C.replace(cfg, **{"method.k": 4}).method.k == 4
    with pytest.raises(ConfigError, match="method.k"):
        C.replace(cfg, **{"method.k": 0})
    # numpy's seeds take any size: only torch's C ints are capped
    big = C.replace(cfg, **{"noise.seed": 2**32 - 1, "data.split_seed": 2**40})
    assert (big.noise.seed, big.data.split_seed) == (2**32 - 1, 2**40)


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"methd": {"k": 1}}, "unknown config key 'methd' (did you mean 'method'?)"),
        ({"method": {"kk": 1}}, "unknown config key 'method.kk' (did you mean 'method.k'?)"),
        ({"method": {"k": "three"}}, "method.k: expected an integer, got 'three'"),
        ({"method": {"k": 2.5}}, "method.k: expected an integer, got 2.5"),
        ({"method": {"k": True}}, "method.k: expected an integer, got True"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
        ({"data": {"augment": "yes"}}, "data.augment: expected true or false, got 'yes'"),
        ({"optim": {"schedule": "linear"}}, "optim.schedule: 'linear' (str) is not one of cosine"),
        ({"method": {"k": 0}}, "method.k: 0 is out of range"),
        ({"method": {"temperature": 0.0}}, "method.temperature: 0.0 is out of range"),
        ({"data": {"val_fraction": 0.9}}, "data.val_fraction: 0.9 is out of range"),
        # at once, not after reading a million images (22 CPU-minutes) as the loader found it out
        ({"data": {"name": "clothing1m", "root": "/c"}}, "data.val_fraction=0.1: clothing1m ships its own validation"),
        ({"method": {"correction_momentum": 1.0}}, "method.correction_momentum: 1.0 is out of range"),
        ({"epochs": 0}, "epochs: 0 is out of range"),
        ({"optim": {"lr": "inf"}}, "optim.lr: expected a finite number, got 'inf'"),
        ({"optim": {"lr": float("nan")}}, "optim.lr: expected a finite number, got nan"),
        ({"noise": {"instance_std": 0.0}}, "noise.instance_std: 0.0 is out of range; use > 0"),
        ({"method": {"correction_start": 0}}, "method.correction_start: 0 is out of range; use >= 1 (epochs count"),
        ({"method": {"name": "knnmx"}}, "unknown method 'knnmx' (did you mean 'knnmix'?)"),
        ({"data": {"name": "mnist"}}, "unknown dataset 'mnist'"),
        ({"noise": {"spec": "symmetric:1.5"}}, "1.5"),
        ({"noise": {"spec": "gaussian:0.2"}}, "gaussian"),
        ({"model": {"name": "vgg"}}, "unknown model 'vgg'"),
        ({"distributed": {"storage_path": "relative/dir"}}, "must be an absolute path"),
        ({"distributed": {"name": ".."}}, "distributed.name: '..' must be one folder name"),  # --overwrite deletes it
        ({"distributed": {"name": "a/../../b"}}, "distributed.name: 'a/../../b' must be one folder name"),
        ({"distributed": {"workers": 3}}, "optim.batch_size: 128 does not split evenly"),
        ({"method": "knnmix"}, "method: expected a mapping of keys, got 'knnmix'"),
        ({"seed": -1}, "seed: -1 is out of range; use >= 0"),
        ({"seed": 10**9}, "seed: 1000000000 is out of range; use an integer in [0, 100000000]"),
        ({"seed": 3 * 10**9}, "seed: 3000000000 is out of range; use an integer in [0, 100000000]"),
        ({"optim": {"batch_size": 2**31}}, "optim.batch_size: 2147483648 is out of range; use <= 2147483647"),
        ({"noise": {"seed": -3}}, "noise.seed: -3 is out of range; use >= 0 (or null)"),
        ({"data": {"split_seed": -3}}, "data.split_seed: -3 is out of range; use >= 0"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(data, needle):
    with pytest.raises(ConfigError) as exc:
        C.from_dict(data)
    msg = str(exc.value)
    assert needle in msg
    assert "\n" not in msg


@pytest.mark.parametrize("item", ["method.k", "=3"])
def test_malformed_overrides(item):
    with pytest.raises(ConfigError):
        C.parse_override(item)


def test_override_values_are_typed():
    assert C.parse_override("method.k=7") == ("method.k", 7)
    assert C.parse_override("data.root=null") == ("data.root", None)
    assert C.parse_override("data.augment=false") == ("data.augment", False)
    assert C.parse_override("noise.spec=symmetric:0.4") == ("noise.spec", "symmetric:0.4")
    # a value ending in ':' is text (YAML read a mapping: "expected a string, got {'symmetric': None}"); {..} maps
    assert C.parse_override("noise.spec=symmetric:") == ("noise.spec", "symmetric:")
    assert C.parse_override("method={k: 2}") == ("method", {"k": 2})
    with pytest.raises(ConfigError, match="noise spec 'symmetric:' needs a rate"):
        C.load(None, ["noise.spec=symmetric:"])


@pytest.mark.parametrize("data, spec, error", [
    ("imagefolder", "asymmetric:0.3", "noise.spec on imagefolder: asymmetric noise has no class map for dataset "
                                      "family 'generic'; use symmetric, pairflip or instance"),
    ("digits", "cifar10n:worse", "noise.spec on digits: noise model 'cifar10n' holds human labels of CIFAR-10's"),
    ("cifar10", "cifar100n:noisy", "needs dataset family 'cifar100', got 'cifar10'"),
    ("webvision", "asymmetric:0.2", "no class map for dataset family 'generic'"),
    ("cifar100", "asymmetric:0.2", None), ("fashion-mnist", "asymmetric:0.4", None),
    ("cifar10", "cifar10n:aggre", None), ("imagefolder", "pairflip:0.2", None),
    ("cifar10", "cifar10n:aggre", "noise.cifar_n_dir: noise.spec=cifar10n:aggre needs the folder that holds "
                                  "CIFAR-10_human.pt, CIFAR-N's human labels (--set noise.cifar_n_dir=DIR)"),
])
def test_noise_a_data_set_cannot_have_is_refused_before_any_image_is_read(data, spec, error):
    """It was refused only once the data set was loaded (an image folder read in full first)."""
    from knnmix.data import DATASETS

    assert set(C.DATA_FAMILIES) == set(DATASETS.names())  # every built-in data set (the tests of each pin its family)
    sets = [f"data.name={data}", f"noise.spec={spec}"]
    if error is None:
        C.load(None, [*sets, "noise.cifar_n_dir=/data/cifar-n"])
    else:
        with pytest.raises(ConfigError, match=re.escape(error)):
            C.load(None, sets)


def test_noise_keys_that_the_noise_does_not_read_are_named():
    """--set noise.symmetric_convention=any under asymmetric noise, or noise.seed under CIFAR-N's fixed human labels,
    changed nothing without a word (only noise.instance_std was named)."""
    def unread(spec, *sets):
        cfg = C.load(None, [f"noise.spec={spec}", *sets])
        return {k for k in C.unread_keys(cfg) if k.startswith("noise.")}

    everything = {"noise.instance_std", "noise.symmetric_convention", "noise.cifar_n_dir", "noise.seed"}
    assert unread("symmetric:0.4") == unread("auto") == {"noise.instance_std", "noise.cifar_n_dir"}
    assert unread("asymmetric:0.4") == unread("pairflip:0.2") == everything - {"noise.seed"}
    assert unread("instance:0.2") == {"noise.symmetric_convention", "noise.cifar_n_dir"}
    assert unread("none") == everything
    assert unread("cifar10n:worse", "data.name=cifar10", "noise.cifar_n_dir=/d") == everything - {"noise.cifar_n_dir"}
    from knnmix.noise import NOISE_MODELS, register_noise_model

    register_noise_model("plug-in", takes_rate=True)(lambda spec, inputs: inputs.labels)
    try:  # a plug-in model gets every noise.* key (NoiseInputs): none is named
        assert unread("plug-in:0.1") == set()
    finally:
        NOISE_MODELS.unregister("plug-in")


def test_missing_or_invalid_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        C.load(lst)
    # a key or value the file got wrong is named as the file's (a run folder's config.yaml, edited by hand, is read
    # by --resume without the user naming it), even when an option sets that key too
    typo = tmp_path / "typo.yaml"
    typo.write_text("epochs: 2\noptim:\n  lrr: 0.1\n  momentum: fast\n")
    with pytest.raises(ConfigError, match=f"^config file '{typo}': unknown config key 'optim.lrr' \\(did you mean"):
        C.load(typo, ["optim.lrr=0.2"])
    typo.write_text("optim:\n  momentum: fast\n")
    with pytest.raises(ConfigError, match=f"^config file '{typo}': optim.momentum: expected a number, got 'fast'"):
        C.load(typo, ["optim.momentum=0.5"])


def test_a_key_given_twice_in_a_config_file_is_refused_not_silently_replaced(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("method:\n  k: 3\nepochs: 4\nmethod:\n  temperature: 0.5\n")  # PyYAML keeps the second only
    with pytest.raises(ConfigError) as exc:
        C.load(path)
    assert str(exc.value) == (f"config file {str(path)!r} is not valid YAML: key 'method' is given twice "
                              "(lines 1 and 4); YAML allows it once")
    path.write_text("data:\n  name: digits\n  name: fashion-mnist\n")
    with pytest.raises(ConfigError, match="key 'name' is given twice"):
        C.load(path)
    path.write_text("base: &b {k: 1}\nmethod:\n  <<: *b\n  temperature: 0.5\n")  # a merge key is not a repeat
    assert C.read_yaml(path, "f")["method"] == {"k": 1, "temperature": 0.5}


def test_unreadable_config_file_or_a_folder_is_one_line(tmp_path, monkeypatch):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError, match=r"config file '.*bin.yaml' cannot be read as YAML text \(UTF-8\): 'utf-8'"):
        C.load(binary)
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        C.load(C.preset_path(str(tmp_path / "dir.yaml")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # a folder named like a preset does not hide the preset
    assert C.preset_path("digits") == C.PRESETS / "digits.yaml"
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="'adir' is neither a file nor an embedded preset"):
        C.preset_path("adir")


def test_every_field_is_documented():
    rows = C.field_docs()
    n_fields = 0

    def count(cls):
        nonlocal n_fields
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in {"data", "noise", "model", "optim", "method", "distributed"}:
                continue
            n_fields += 1
        for f in dataclasses.fields(cls):
            sub = {"data": C.DataConfig, "noise": C.NoiseConfig, "model": C.ModelConfig, "optim": C.OptimConfig,
                   "method": C.MethodConfig, "distributed": C.DistributedConfig}.get(f.name)
            if cls is C.Config and sub is not None:
                count(sub)

    count(C.Config)
    assert len(rows) == n_fields
    undocumented = [key for key, _, _, doc in rows if not doc]
    assert not undocumented, f"fields without a meaning documented: {undocumented}"


def test_numpy_numbers_are_taken_as_plain_ones():
    """A notebook's `for k in np.arange(1, 5): C.replace(cfg, **{"method.k": k})` was refused ('expected an
    integer, got np.int64(1)'); the values are saved as plain numbers, so the YAML stays portable."""
    cfg = C.from_dict({"epochs": np.int64(3), "method": {"k": np.int32(4)}, "optim": {"lr": np.float64(0.2)}})
    assert (cfg.epochs, cfg.method.k, cfg.optim.lr) == (3, 4, 0.2)
    assert type(cfg.epochs) is int and type(cfg.method.k) is int and type(cfg.optim.lr) is float
    assert yaml.safe_load(C.to_yaml(cfg))["method"]["k"] == 4
    # numpy's str_ and bool_ too (a str_ choice was kept as such: writing config.yaml failed, after --overwrite had
    # deleted the run it replaced)
    cfg = C.from_dict({"optim": {"optimizer": np.str_("adamw")}, "data": {"augment": np.False_}, "out": np.str_("x")})
    assert yaml.safe_load(C.to_yaml(cfg))["optim"]["optimizer"] == "adamw" and cfg.data.augment is False
    with pytest.raises(ConfigError, match=r"epochs: expected an integer, got np.float64\(3.0\)"):
        C.from_dict({"epochs": np.float64(3.0)})
