"""What a notebook user hands the library by mistake: wrong dtypes, devices, names and contracts are one-line
errors naming the argument (:class:`knnmix.errors.KnnmixError`), never a silently wrong result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import knnmix
from knnmix.errors import KnnmixError
from knnmix.math import FaissSearch, TorchSearch, fit_clean_probability, fit_clean_probability_per_class, l2_normalise
from knnmix.math import mix_batch, neighbour_weights, neighbours_excluding_self, neighbours_within_batch
from knnmix.math import normalise_losses, one_hot_targets, update_soft_targets, window_mean

# ----------------------------------------------------------------------------------------------------------------
# knnmix.math


def test_mix_batch_refuses_integer_targets_and_images_instead_of_mixing_to_zero():
    weights = torch.tensor([[0.75, 0.25]])
    targets = torch.eye(3)[torch.tensor([[0, 1]])]  # (1, 2, 3)
    images = torch.rand(1, 2, 1, 2, 2)
    assert torch.allclose(mix_batch(images, targets, weights)[1], torch.tensor([[0.75, 0.25, 0.0]]))
    with pytest.raises(KnnmixError, match="targets must be floating point, got torch.int64"):
        mix_batch(images, targets.long(), weights)  # one-hot int64: the weights became 0 and the labels all zero
    with pytest.raises(KnnmixError, match="images must be floating point, got torch.uint8"):
        mix_batch((images * 255).to(torch.uint8), targets, weights)


def test_update_soft_targets_with_keep_corrects_integer_one_hot_targets():
    targets = torch.eye(2)[torch.tensor([0, 1])]
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    keep = torch.zeros(2)
    want = update_soft_targets(targets, probs, 0.5, keep)
    assert torch.allclose(want, torch.tensor([[0.6, 0.4], [0.3, 0.7]]))
    # int64 one-hot targets: the step was computed in int64 and truncated, leaving [[0.5, 0], [0, 0.5]]
    assert torch.allclose(update_soft_targets(targets.long(), probs, 0.5, keep), want)


def test_neighbour_weights_refuses_nan_temperature_and_bad_members():
    clean = torch.tensor([0.9, 0.1, 0.5])
    with pytest.raises(ValueError, match="temperature must be >= 0, got nan"):
        neighbour_weights(clean, torch.tensor([[0, 1]]), float("nan"))  # gave NaN weights
    with pytest.raises(KnnmixError, match=r"members must lie in \[0, 3\).*found -1\.\.0"):
        neighbour_weights(clean, torch.tensor([[0, -1]]), 1.0)  # -1 silently weighed the last sample
    with pytest.raises(KnnmixError, match="members must be an integer tensor"):
        neighbour_weights(clean, torch.tensor([[True, False]]), 1.0)
    with pytest.raises(KnnmixError, match="temperature must be a number"):
        neighbour_weights(clean, torch.tensor([[0, 1]]), "1")


def test_neighbours_excluding_self_refuses_masks_fractions_and_positions_outside_the_bank():
    bank = l2_normalise(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    search = TorchSearch()
    search.build(bank)
    assert neighbours_excluding_self(search, bank, torch.tensor([0, 5]), 2).shape == (2, 2)
    with pytest.raises(KnnmixError, match="query_positions must be an integer tensor, got torch.bool"):
        neighbours_excluding_self(search, bank, torch.tensor([True, False, True, False, False, True]), 2)
    with pytest.raises(KnnmixError, match="query_positions must be an integer tensor, got torch.float32"):
        neighbours_excluding_self(search, bank, torch.tensor([0.0, 2.7]), 2)
    with pytest.raises(KnnmixError, match=r"query_positions must lie in \[0, 6\)"):
        neighbours_excluding_self(search, bank, torch.tensor([0, 9]), 2)
    with pytest.raises(KnnmixError, match="k must be an integer >= 1, got 2.0"):
        neighbours_excluding_self(search, bank, torch.tensor([0]), 2.0)
    with pytest.raises(KnnmixError, match="k must be an integer >= 1, got 1.5"):
        neighbours_within_batch(bank, 1.5)


@pytest.mark.parametrize("searcher", [TorchSearch, FaissSearch])
def test_a_bank_with_nan_features_is_refused(searcher):
    bank = l2_normalise(torch.randn(5, 3))
    bank[2, 0] = float("nan")  # faiss answered position -1 for every query, which indexes the last sample
    with pytest.raises(KnnmixError, match=r"bank \(5, 3\) holds NaN or infinite values in 1 rows"):
        searcher().build(bank)


def test_meta_tensors_and_non_integer_labels_are_named():
    meta = torch.ones(4, device="meta")
    for call in (lambda: fit_clean_probability(meta), lambda: normalise_losses(meta),
                 lambda: update_soft_targets(torch.ones(2, 2, device="meta"), torch.ones(2, 2, device="meta"), 0.5,
                                             torch.zeros(2, device="meta")),
                 lambda: TorchSearch().build(torch.ones(3, 2, device="meta"))):
        with pytest.raises(KnnmixError, match="is on the meta device"):
            call()
    with pytest.raises(KnnmixError, match="labels must be an integer tensor, got torch.float32"):
        one_hot_targets(torch.tensor([0.0, 1.7]), 3)  # was truncated to [0, 1]
    losses = torch.tensor([0.1, 0.2, 2.0, 2.1])
    with pytest.raises(KnnmixError, match=r"labels must lie in \[0, 2\)"):
        fit_clean_probability_per_class(losses, torch.tensor([0, 0, 5, 5]), 2, min_class=2)  # class 5 ignored
    with pytest.raises(KnnmixError, match="history must be floating point"):
        window_mean(torch.ones(2, 3, dtype=torch.long), 1)
    with pytest.raises(KnnmixError, match="window must be an integer >= 1, got 1.5"):
        window_mean(torch.ones(2, 3), 1.5)


# ----------------------------------------------------------------------------------------------------------------
# knnmix.find_label_issues


def _probs_and_labels() -> tuple[np.ndarray, np.ndarray]:
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=20)
    labels = probs.argmax(1)
    labels[:3] = (labels[:3] + 1) % 3
    return probs, labels


def test_find_label_issues_refuses_what_is_not_probabilities():
    probs, labels = _probs_and_labels()
    assert len(knnmix.find_label_issues(labels, probs)["index"]) == 20
    nan = probs.copy()
    nan[0] = np.nan  # was ranked least suspect of all, with clean_prob NaN and is_label_issue False
    with pytest.raises(KnnmixError, match=r"pred_probs holds NaN or infinite values in 1 rows \(first: row 0\)"):
        knnmix.find_label_issues(labels, nan)
    logits = np.log(probs) + 3.0  # logits instead of probabilities: ranked without complaint
    with pytest.raises(KnnmixError, match="pred_probs must be probabilities .* 20 rows are not"):
        knnmix.find_label_issues(labels, logits)


def test_find_label_issues_refuses_fractional_and_out_of_range_labels():
    probs, labels = _probs_and_labels()
    with pytest.raises(KnnmixError, match="labels must be integer class indices, got float64"):
        knnmix.find_label_issues(labels + 0.7, probs)  # was truncated to the given labels
    with pytest.raises(KnnmixError, match=r"corrected_labels must lie in \[0, 3\).*found -1\.\.-1"):
        knnmix.find_label_issues(labels, probs, corrected_labels=np.full(20, -1))  # wrapped to the last class
    with pytest.raises(KnnmixError, match=r"corrected_labels must lie in \[0, 3\)"):
        knnmix.find_label_issues(labels, probs, corrected_labels=np.full(20, 7))  # IndexError
    assert knnmix.find_label_issues(labels.astype(float), probs)["given_label"].dtype == np.int64
    empty = knnmix.find_label_issues(np.zeros(0, dtype=int), np.zeros((0, 3)))  # 'losses holds no finite value'
    assert all(len(v) == 0 for v in empty.values()) and len(empty) == 7
    with pytest.raises(knnmix.KnnmixError, match=r"threshold must be a number in \(0, 1\), got '0.5'"):
        knnmix.find_label_issues(labels, probs, threshold="0.5")  # TypeError: '<' not supported
    for seed in (-1, 2**32, 1.5, True):  # -1: scikit-learn's InvalidParameterError from inside the mixture fit
        with pytest.raises(knnmix.KnnmixError, match=rf"seed must be an integer in \[0, 2\*\*32\), got {seed!r}"):
            knnmix.find_label_issues(labels, probs, seed=seed)
    assert knnmix.KnnmixError is KnnmixError  # catchable from the package, as the one error its functions raise
    # ... and listed by dir(), which a notebook's tab completion offers (imported on first use, they were not)
    assert {"KnnmixError", "find_label_issues", "train"} <= set(dir(knnmix)) and "Any" not in dir(knnmix)


# ----------------------------------------------------------------------------------------------------------------
# Registries


def test_registering_without_a_name_is_an_error_not_a_silently_lost_registration():
    from knnmix.models import MODELS

    def tiny(num_classes, in_channels, image_size):
        return torch.nn.Linear(1, 1)

    with pytest.raises(KnnmixError, match=r"model name must be a non-empty string, got <function .*with the name"):
        MODELS.register(tiny)  # @MODELS.register without (name): replaced tiny by the decorator, registered nothing
    with pytest.raises(KnnmixError, match="model name must be a non-empty string, got 3"):
        MODELS.register(3)  # was registered, and every later names() and unknown-name error raised TypeError
    assert "small_cnn" in MODELS.names()


def test_a_notebook_cell_run_twice_re_registers_but_another_object_cannot_take_a_name():
    from knnmix.data import DATASETS
    from knnmix.noise import register_noise_model

    try:
        for _ in range(2):  # the same cell, run twice: was RuntimeError "dataset 'cell-ds' is registered twice"
            @DATASETS.register("cell-ds")
            def cell_ds(root, download):
                return None
        assert DATASETS.get("cell-ds") is cell_ds
        for _ in range(2):
            @register_noise_model("cell-noise", takes_rate=True)
            def cell_noise(spec, inputs):
                return inputs.labels
        with pytest.raises(KnnmixError, match=r"dataset 'digits' is already registered \(knnmix\.data\.digits\..*"
                                              r"unregister\('digits'\)"):
            DATASETS.register("digits")(cell_ds)
    finally:
        DATASETS.unregister("cell-ds")
        from knnmix.noise import NOISE_MODELS
        NOISE_MODELS.unregister("cell-noise")


# ----------------------------------------------------------------------------------------------------------------
# Plugin contracts: datasets, networks, methods


def test_a_dataset_loader_that_breaks_the_contract_is_named():
    from knnmix.data import DATASETS, DatasetBundle, TensorSource, load_dataset
    from knnmix.errors import DataError

    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)

    def tuple_ds(root, download):
        return images, np.zeros(4)

    def no_args():
        return None

    try:
        DATASETS.register("_tuple_ds")(tuple_ds)
        DATASETS.register("_no_args_ds")(no_args)
        with pytest.raises(DataError, match="dataset '_tuple_ds': its loader returned tuple, not a DatasetBundle"):
            load_dataset("_tuple_ds")  # returned the tuple; training failed on 'tuple' object has no attribute
        with pytest.raises(DataError, match=r"dataset '_no_args_ds': its loader must take \(root, download"):
            load_dataset("_no_args_ds")
    finally:
        DATASETS.unregister("_tuple_ds")
        DATASETS.unregister("_no_args_ds")
    source = TensorSource(images, [0.5], [0.5])
    with pytest.raises(DataError, match="train_labels must be integer class indices, got float64"):
        DatasetBundle("x", "generic", ["a", "b"], source, np.array([0.0, 1.7, 1.0, 0.0]))  # 1.7 became class 1
    with pytest.raises(DataError, match="classes must be a list of class names, got 'ab'"):
        DatasetBundle("x", "generic", "ab", source, np.zeros(4))
    with pytest.raises(DataError, match="train must be an ImageSource .* got Tensor"):
        DatasetBundle("x", "generic", ["a", "b"], images.float(), np.zeros(4))
    whole = np.array([0.0, 1.0, 1.0, 0.0])  # integral floats are fine
    assert DatasetBundle("x", "generic", ["a", "b"], source, whole).train_labels.dtype == np.int64


def test_network_and_method_factories_that_break_the_contract_are_named(tmp_path):
    from knnmix import config
    from knnmix.engine.train import build_run
    from knnmix.methods import METHODS
    from knnmix.models import MODELS, build_model

    def one_arg(num_classes):
        return torch.nn.Linear(1, num_classes)

    def not_a_module(num_classes, in_channels, image_size):
        return None

    def plain_logits(num_classes, in_channels, image_size):  # a torch network, but no features for the search
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size ** 2, num_classes))

    def not_a_method(cfg, num_classes):
        return object()

    try:
        MODELS.register("_one_arg")(one_arg)
        MODELS.register("_not_a_module")(not_a_module)
        MODELS.register("_plain_logits")(plain_logits)
        METHODS.register("_not_a_method")(not_a_method)
        with pytest.raises(KnnmixError, match=r"model '_one_arg': its factory must take \(num_classes, in_channels"):
            build_model("_one_arg", 3, 1, 8)
        with pytest.raises(KnnmixError, match="model '_not_a_module': its factory returned NoneType, not a knnmix"):
            build_model("_not_a_module", 3, 1, 8)
        with pytest.raises(KnnmixError, match=r"'_plain_logits': .* Sequential, not a knnmix.models.Backbone \(forw"):
            build_model("_plain_logits", 3, 1, 8)  # was "too many values to unpack" in the first training step
        cfg = config.load(config.preset_path("digits"), ["data.train_subset=100", "method.name=_not_a_method",
                                                         f"out={tmp_path}"])
        with pytest.raises(KnnmixError, match="method '_not_a_method': its registered factory made a object"):
            build_run(cfg)  # AttributeError: 'object' object has no attribute 'schedule_note'
    finally:
        for registry, name in ((MODELS, "_one_arg"), (MODELS, "_not_a_module"), (MODELS, "_plain_logits"),
                               (METHODS, "_not_a_method")):
            registry.unregister(name)


def test_a_network_whose_outputs_break_the_contract_is_named_when_it_is_built():
    """A Backbone's outputs are checked on two blank images where it is built: before, unpooled features or a head
    of another width failed inside the first training step (a shape error from the loss or the neighbour search)."""
    from knnmix.models import MODELS, Backbone, build_model

    class Net(Backbone):
        def __init__(self, num_classes, in_channels, image_size, pool=True, width=None):
            super().__init__()
            self.pool, self.feature_dim, self.num_classes = pool, 4, num_classes
            self.conv = torch.nn.Conv2d(in_channels, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, width or num_classes)

        def forward_features(self, x):
            x = self.conv(x)
            return x.mean((2, 3)) if self.pool else x.flatten(1)

    makers = {"_unpooled": lambda n, c, s: Net(n, c, s, pool=False), "_wide": lambda n, c, s: Net(n, c, s, width=7),
              "_rgb_only": lambda n, c, s: Net(n, 3, s), "_fine": Net}
    try:
        for name, make in makers.items():
            MODELS.register(name)(make)
        with pytest.raises(KnnmixError, match=r"'_unpooled': a forward pass on a \(2, 1, 8, 8\) batch failed: .*"
                                              r"mat1 and mat2 shapes cannot be multiplied"):
            build_model("_unpooled", 3, 1, 8)
        with pytest.raises(KnnmixError, match=r"'_wide': forward on a \(2, 1, 8, 8\) batch must return float "
                                              r"\(logits \(2, 3\), features \(2, D\)\); it returned \(\(2, 7\), \(2, 4\)\)"):
            build_model("_wide", 3, 1, 8)
        with pytest.raises(KnnmixError, match=r"'_rgb_only': a forward pass .* failed: .*expected input\[2, 1, 8, 8\]"):
            build_model("_rgb_only", 3, 1, 8)
        net = build_model("_fine", 3, 1, 8)
        assert net.training and net.conv.weight.grad is None  # left as built: training mode, no gradient
    finally:
        for name in makers:
            MODELS.unregister(name)


# ----------------------------------------------------------------------------------------------------------------
# The config from Python


def test_config_load_takes_a_preset_name_and_refuses_a_string_of_overrides():
    from knnmix import config
    from knnmix.errors import ConfigError

    assert config.load("digits", ["method.k=3"]).method.k == 3  # was "config file 'digits' does not exist"
    with pytest.raises(ConfigError, match=r"overrides must be a list of 'key=value' strings.*\['method.k=3'\]"):
        config.load("digits", "method.k=3")  # read character by character: "override 'm' must look like key=value"
    with pytest.raises(ConfigError, match="'nope' is neither a file nor an embedded preset"):
        config.load("nope")


def test_train_checks_a_config_changed_by_hand_and_takes_a_dict(tmp_path):
    from knnmix import config
    from knnmix.engine.train import train
    from knnmix.errors import ConfigError

    cfg = config.load(config.preset_path("digits"), ["model.name=small_cnn", "noise.spec=none", "noise.seed=0",
                                                     "epochs=1", "data.train_subset=100", f"out={tmp_path}"])
    cfg.method.temperature = -1.0  # a notebook's attribute assignment, after from_dict validated
    with pytest.raises(ConfigError, match=r"method.temperature: -1.0 is out of range; use > 0"):
        train(cfg, echo=None)
    with pytest.raises(ConfigError, match="unknown config key 'method.kk'"):
        train({"method": {"kk": 1}, "out": str(tmp_path)}, echo=None)  # AttributeError: 'dict' has no attribute 'out'
    with pytest.raises(ConfigError, match="train needs a knnmix.config.Config .* got str"):
        train("digits", echo=None)
    cfg.method.temperature = 0.5
    # a notebook's torch is as it was after a run: its thread count and denormal numbers (flushed to zero in a run)
    threads = torch.get_num_threads()
    torch.set_flush_denormal(False)  # (torch's default; an earlier run in this process may have left it on)
    train(config.replace(cfg, threads=threads - 1 if threads > 1 else 2, out=str(tmp_path / "kept")), echo=None)
    assert torch.get_num_threads() == threads and torch.tensor([1e-40]).item() != 0.0
    # distributed.workers: it trained in this one process and recorded two workers
    with pytest.raises(ConfigError, match=r"distributed.workers=2: train\(\) trains in this process; .*distributed"):
        train(config.replace(cfg, **{"distributed.workers": 2}), echo=None)
    assert not (tmp_path / "config.yaml").exists()
    # the config helpers take what a notebook has at hand, or say what they need
    assert config.from_dict(cfg).epochs == 1 and config.replace({"epochs": 2}, **{"method.k": 3}).method.k == 3
    with pytest.raises(ConfigError, match="replace needs a knnmix.config.Config .* got str"):
        config.replace("digits", epochs=2)  # AttributeError: asdict() should be called on dataclass instances
    with pytest.raises(ConfigError, match="a config is a file path or a preset name, got None"):
        config.preset_path(None)  # TypeError from pathlib
