"""Every config field reaches the code that uses it.

One probe per key: change the key, observe the effect where the value is consumed. A meta-test checks that every
key of the config (except the ``distributed`` section, probed in tests/test_ray_train.py) has a probe here, so a new
field cannot be added without showing that it is wired.
"""

from __future__ import annotations

import typing
import warnings

import numpy as np
import pytest
import torch

from knnmix import config as C
from knnmix.data import DATASETS, DatasetBundle, TensorSource
from knnmix.methods import phases
from knnmix.engine import train as E
from knnmix.engine.checkpoint import RunFolder
from knnmix.engine.splits import build_splits
from knnmix.errors import ConfigError, DataError, KnnmixWarning
from knnmix.methods import builtin
from knnmix.methods.state import SampleState

PROBED: set[str] = set()


def probe(*keys: str):
    PROBED.update(keys)

    def deco(fn):
        return fn

    return deco


def cfg_with(tmp_path, **dotted) -> C.Config:
    base = C.load(C.preset_path("digits"))
    values = {"out": str(tmp_path / "run"), "data.train_subset": 400, "epochs": 3, "log_every": 100}
    values.update(dotted)
    return C.replace(base, **values)


def engine(tmp_path, **dotted) -> E.Run:
    return E.build_run(cfg_with(tmp_path, **dotted))


def epochs(run: E.Run, n: int) -> None:
    for e in range(run.epoch + 1, run.epoch + n + 1):
        E.run_epoch(run, e)
        run.epoch = e


# ---------------------------------------------------------------------------------------------------------------
# data


@probe("data.name")
def test_data_name(tmp_path):
    assert engine(tmp_path).splits.bundle.name == "digits"
    s = build_splits(cfg_with(tmp_path, **{"data.name": "fashion-mnist", "model.name": "small_cnn"}))
    assert s.bundle.name == "fashion-mnist"


@probe("data.root")
def test_data_root(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        build_splits(cfg_with(tmp_path, **{"data.name": "fashion-mnist", "data.root": str(tmp_path / "empty")}))


@probe("data.download")
def test_data_download(tmp_path, monkeypatch):
    from knnmix.data import fashion_mnist

    asked = []
    monkeypatch.setattr(fashion_mnist, "torchvision_download", lambda dataset, cls, root: asked.append(root))
    root = str(tmp_path / "fm")
    for download in (False, True):
        with pytest.raises(DataError):
            build_splits(cfg_with(tmp_path, **{"data.name": "fashion-mnist", "data.root": root,
                                               "data.download": download}))
    assert len(asked) == 1


@probe("data.val_fraction", "data.train_subset", "data.split_seed")
def test_data_split_keys(tmp_path):
    a = build_splits(cfg_with(tmp_path, **{"data.val_fraction": 0.25, "data.train_subset": 400}))
    assert len(a.val) == 100 and len(a.train) == 300
    b = build_splits(cfg_with(tmp_path, **{"data.val_fraction": 0.25, "data.train_subset": 400,
                                           "data.split_seed": 1}))
    assert not np.array_equal(a.val_rows, b.val_rows)
    with pytest.warns(KnnmixWarning, match=r"data.val_fraction=0.01 of 40 training images is no image: the run has "
                                           r"no validation split"):  # (it ran without one, without a word)
        assert build_splits(cfg_with(tmp_path, **{"data.val_fraction": 0.01, "data.train_subset": 40})).val is None


@probe("data.augment")
def test_data_augment(tmp_path):
    assert build_splits(cfg_with(tmp_path)).train.augment is True
    assert build_splits(cfg_with(tmp_path, **{"data.augment": False})).train.augment is False


@probe("data.num_workers")
def test_data_num_workers(tmp_path, monkeypatch):
    made = []
    real = E.DataLoader

    def spy(*args, **kwargs):
        made.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "DataLoader", spy)
    eng = engine(tmp_path, **{"data.num_workers": 1, "method.name": "ce"})
    E.train_one_epoch(eng, 1)
    eng.close_loaders()  # its worker, now rather than when the garbage collector finds it (5 s then)
    assert made and set(made) == {1}


@probe("data.epoch_samples")
def test_data_epoch_samples(tmp_path):
    eng = engine(tmp_path, **{"data.epoch_samples": 100})
    assert len(E.active_indices(eng, 1)) == 100
    assert not torch.equal(E.active_indices(eng, 1), E.active_indices(eng, 2))
    assert len(E.active_indices(engine(tmp_path), 1)) == len(engine(tmp_path).splits.train)
    # an epoch searches neighbours in its own draw: k (and vote_k) must fit it, before the first epoch
    match = r"method.vote_k=10 is not smaller than an epoch's draw \(data.epoch_samples=10\) \(10 samples\)"
    with pytest.raises(ConfigError, match=match):
        engine(tmp_path, **{"data.epoch_samples": 10})
    assert len(E.active_indices(engine(tmp_path, **{"data.epoch_samples": 10, "method.name": "ce"}), 1)) == 10  # no
    # neighbours: ce's default k and vote_k, which it does not read, are no error (they were, as for knnmix)


_SEEN_OPTIONS: dict[str, object] = {}


def _probe_loader(root, download, *, image_size, labels_file, test_root, on_bad_image, first_classes):
    _SEEN_OPTIONS.update(image_size=image_size, labels_file=labels_file, test_root=test_root,
                         on_bad_image=on_bad_image, first_classes=first_classes)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    return DatasetBundle("_wiring_probe", "generic", ["a", "b"], TensorSource(images, [0.5], [0.5]),
                         np.arange(40) % 2)


@pytest.fixture
def probe_dataset():
    DATASETS.register("_wiring_probe")(_probe_loader)
    yield
    DATASETS.unregister("_wiring_probe")


@probe("data.image_size", "data.labels_file", "data.test_root", "data.on_bad_image", "data.first_classes")
def test_dataset_options_reach_the_loader(tmp_path, probe_dataset):
    values = {"image_size": 32, "labels_file": "l.csv", "test_root": "t", "on_bad_image": "skip", "first_classes": 2}
    build_splits(cfg_with(tmp_path, **{"data.name": "_wiring_probe", "data.train_subset": None,
                                       **{f"data.{k}": v for k, v in values.items()}}))
    assert _SEEN_OPTIONS == values


# ---------------------------------------------------------------------------------------------------------------
# noise


@probe("noise.spec", "noise.seed", "noise.symmetric_convention")
def test_noise_keys(tmp_path):
    def rate(**kw):
        return build_splits(cfg_with(tmp_path, **{"data.train_subset": None, **kw})).noise

    assert rate(**{"noise.spec": "symmetric:0.2"}).noise_rate == pytest.approx(0.2, abs=0.002)
    a = rate(**{"noise.seed": 1}).noisy_labels
    assert not np.array_equal(a, rate(**{"noise.seed": 2}).noisy_labels)
    assert rate(**{"noise.symmetric_convention": "any"}).noise_rate < 0.38  # about 0.4 * 9/10
    # noise under which classes are given another class's label more often than their own: no method learns them
    with pytest.warns(KnnmixWarning, match=r"noise asymmetric:0.8: 5 of 10 classes are given one other class's label "
                                           r"more often than their own \('2', '3', '5', '6', '7'\); trained on these"):
        rate(**{"noise.spec": "asymmetric:0.8"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", KnnmixWarning)
        rate(**{"noise.spec": "symmetric:0.8"})  # 20% true against 8.9% for each other class: learnable


@probe("noise.cifar_n_dir", "noise.instance_std")
def test_noise_paths_and_parameters_reach_apply_noise(tmp_path, monkeypatch):
    from knnmix.engine import splits as S

    seen = {}
    real = S.apply_noise

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "apply_noise", spy)
    build_splits(cfg_with(tmp_path, **{"noise.cifar_n_dir": "/x/cifar-n", "noise.instance_std": 0.3}))
    assert seen["cifar_n_dir"] == "/x/cifar-n" and seen["instance_std"] == 0.3


# ---------------------------------------------------------------------------------------------------------------
# model


@probe("model.name", "model.pretrained")
def test_model_keys(tmp_path):
    eng = engine(tmp_path, **{"model.name": "preact_resnet18"})
    assert type(eng.model).__name__ == "PreActResNet"
    donor = engine(tmp_path, seed=5).model
    path = tmp_path / "w.pt"
    torch.save(donor.state_dict(), path)
    got = engine(tmp_path, **{"model.pretrained": str(path)}).model
    key = next(k for k in donor.state_dict() if k.endswith("weight"))
    assert torch.equal(got.state_dict()[key], donor.state_dict()[key])


# ---------------------------------------------------------------------------------------------------------------
# optimiser and schedule


@probe("optim.optimizer", "optim.lr", "optim.momentum", "optim.nesterov", "optim.weight_decay")
def test_optimizer_keys(tmp_path):
    g = engine(tmp_path, **{"optim.lr": 0.03, "optim.momentum": 0.8, "optim.nesterov": True,
                            "optim.weight_decay": 0.001}).optimizer.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.03, 0.8, True, 0.001)
    assert isinstance(engine(tmp_path, **{"optim.optimizer": "adamw"}).optimizer, torch.optim.AdamW)


@probe("optim.schedule", "optim.restart_period", "optim.min_lr", "epochs")
def test_schedule_keys(tmp_path):
    s = engine(tmp_path, **{"optim.schedule": "cosine_restarts", "optim.restart_period": 7,
                            "optim.min_lr": 0.001}).scheduler
    assert isinstance(s, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)
    assert (s.T_0, s.eta_min) == (7, 0.001)
    assert engine(tmp_path, epochs=9).scheduler.T_max == 9
    s = engine(tmp_path, **{"optim.schedule": "constant"}).scheduler
    s.step()
    assert s.base_lrs == [0.05] and s.lr_lambdas[0](10) == 1.0


@probe("optim.batch_size", "optim.eval_batch_size")
def test_batch_sizes(tmp_path, monkeypatch):
    eng = engine(tmp_path, **{"optim.batch_size": 50, "optim.eval_batch_size": 70, "method.name": "ce"})
    sizes = []
    real = eng.model.forward
    monkeypatch.setattr(eng.model, "forward", lambda x: (sizes.append(x.shape[0]), real(x))[1])
    E.train_one_epoch(eng, 1)
    assert max(sizes) == 50
    sizes.clear()
    E.evaluate(eng, eng.splits.train)
    assert max(sizes) == 70


# ---------------------------------------------------------------------------------------------------------------
# method


@probe("method.name")
def test_method_name(tmp_path):
    assert type(engine(tmp_path, **{"method.name": "selc"}).method).__name__ == "SELC"


@probe("method.warmup_epochs", "method.premix", "method.correction_start")
def test_phase_keys(tmp_path):
    m = engine(tmp_path, **{"method.warmup_epochs": 2, "method.correction_start": 5}).method
    assert [m.phase_of(e) for e in range(1, 7)] == ["ce", "ce", "mixup", "mixup", "knn", "knn"]
    m = engine(tmp_path, **{"method.warmup_epochs": 2, "method.correction_start": 5, "method.premix": "knn"}).method
    assert m.phase_of(3) == "knn"


@probe("method.k", "method.search")
def test_k_and_search_backend(tmp_path, monkeypatch):
    asked = []
    for backend in ("faiss", "torch"):
        eng = engine(tmp_path, **{"method.k": 7, "method.search": backend, "method.warmup_epochs": 0,
                                  "method.correction_start": 1, "method.vote_k": 9})
        searcher = eng.neighbour_search()
        assert type(searcher).__name__ == {"faiss": "FaissSearch", "torch": "TorchSearch"}[backend]
        real = searcher.search
        monkeypatch.setattr(searcher, "search", lambda q, k: (asked.append(k), real(q, k))[1])
        monkeypatch.setattr(eng, "neighbour_search", lambda s=searcher: s)
        eng.method.prepare_epoch(1, eng)
        assert eng.state.neighbours.shape[1] == 7
    assert asked == [10, 10]  # one search for the gate's vote_k and the K neighbours (max + the query, dropped)


@probe("method.temperature")
def test_temperature(tmp_path, monkeypatch):
    seen = []
    real = builtin.neighbour_weights
    monkeypatch.setattr(builtin, "neighbour_weights", lambda w, m, t: (seen.append(t), real(w, m, t))[1])
    eng = engine(tmp_path, **{"method.temperature": 0.25, "method.warmup_epochs": 0, "method.correction_start": 1})
    epochs(eng, 1)
    assert seen and set(seen) == {0.25}


@probe("method.mixup_alpha")
def test_mixup_alpha(tmp_path, monkeypatch):
    seen = []
    real = np.random.beta
    monkeypatch.setattr(builtin.np.random, "beta", lambda a, b: (seen.append((a, b)), real(a, b))[1])
    eng = engine(tmp_path, **{"method.name": "mixup", "method.mixup_alpha": 0.4})
    epochs(eng, 1)
    assert seen and set(seen) == {(0.4, 0.4)}


@probe("method.correction_period", "method.correction_momentum")
def test_correction_schedule_keys(tmp_path, monkeypatch):
    calls = []
    real = phases.correct_targets
    monkeypatch.setattr(phases, "correct_targets", lambda s, b, m, *rest: (calls.append(m), real(s, b, m))[1])
    eng = engine(tmp_path, epochs=6, **{"method.warmup_epochs": 1, "method.correction_start": 2,
                                        "method.correction_period": 2, "method.correction_momentum": 0.6})
    corrected = []
    for e in range(1, 7):
        before = len(calls)
        eng.method.prepare_epoch(e, eng)
        eng.epoch = e
        if len(calls) > before:
            corrected.append(e)
    assert corrected == [2, 4, 6]
    assert set(calls) == {0.6}


@probe("method.correction_gate")
@pytest.mark.parametrize("gate", ["none", "clean_prob", "neighbours", "clean_prob+neighbours"])
def test_correction_gate(tmp_path, monkeypatch, gate):
    """clean_prob: a sample the last mixture fit holds clean keeps its target; neighbours: a sample none of whose
    neighbours agree with its prediction keeps it; both: either holds it; none: every target moves."""
    eng = engine(tmp_path, **{"method.correction_gate": gate, "method.warmup_epochs": 1, "method.correction_start": 2,
                              "method.correction_period": 1})
    epochs(eng, 1)
    before = eng.state.targets.clone()
    eng.state.clean_prob[:] = 0.0
    eng.state.clean_prob[:100] = 1.0  # held clean
    votes = []

    def vote(state, bank, found):  # no neighbour agrees with samples 100-199
        votes.append(found.shape[1])
        return torch.where((bank.index >= 100) & (bank.index < 200), 0.0, 1.0)

    monkeypatch.setattr(phases, "neighbour_vote", vote)
    eng.method.prepare_epoch(2, eng)
    held = [torch.equal(eng.state.targets[a:a + 100], before[a:a + 100]) for a in (0, 100, 200)]
    assert held == [gate in ("clean_prob", "clean_prob+neighbours"), "neighbours" in gate, False]
    assert votes == ([10] if "neighbours" in gate else [])


def test_an_unknown_correction_gate_is_refused_by_the_phase_too():
    """The config's choices are the phase's gates; called directly, an unknown gate took the whole step."""
    assert typing.get_args(typing.get_type_hints(C.MethodConfig)["correction_gate"]) == phases.CORRECTION_GATES
    state = SampleState.initial(torch.tensor([0, 1]), 2, 1)
    bank = phases.Bank(index=torch.tensor([0, 1]), features=torch.eye(2), log_probs=torch.log(torch.full((2, 2), 0.5)))
    with pytest.raises(ValueError, match="unknown correction gate 'clean-prob'; choose one of none, clean_prob, "):
        phases.correct_targets(state, bank, 0.9, "clean-prob")


@probe("method.vote_k")
def test_vote_k(tmp_path, monkeypatch):
    """The neighbour gate's vote uses method.vote_k real neighbours from the bank."""
    seen = []
    real = phases.neighbour_vote
    monkeypatch.setattr(phases, "neighbour_vote",
                        lambda s, b, found: (seen.append(found.shape[1]), real(s, b, found))[1])
    eng = engine(tmp_path, **{"method.correction_gate": "neighbours", "method.vote_k": 7, "method.warmup_epochs": 1,
                              "method.correction_start": 2, "method.correction_period": 1})
    epochs(eng, 2)
    assert seen == [7]
    with pytest.raises(ConfigError, match="method.vote_k=5000 is not smaller than the training set"):
        engine(tmp_path, **{"method.vote_k": 5000})


@probe("method.loss_window")
def test_loss_window(tmp_path):
    eng = engine(tmp_path, **{"method.loss_window": 3, "method.warmup_epochs": 0, "method.correction_start": 4})
    fitted = []
    for e in range(1, 7):
        eng.method.prepare_epoch(e, eng)
        eng.epoch = e
        fitted.append(eng.state.loss_history.shape[0])
    # the mixture needs the 2 epochs before the mixing phase (epoch 4) to average 3 epochs' losses at epoch 4
    assert fitted == [0, 1, 2, 3, 3, 3]


@probe("method.gmm_max_iter", "method.gmm_tol", "method.gmm_reg_covar")
def test_gmm_keys(tmp_path, monkeypatch):
    for mixture, fit in (("global", "fit_clean_probability"), ("per_class", "fit_clean_probability_per_class")):
        seen = {}
        real = getattr(phases, fit)

        def spy(*a, seen=seen, real=real, **kw):
            seen.update(kw)
            return real(*a, **kw)

        monkeypatch.setattr(phases, fit, spy)
        eng = engine(tmp_path, **{"method.gmm_max_iter": 3, "method.gmm_tol": 0.5, "method.gmm_reg_covar": 0.01,
                                  "method.warmup_epochs": 0, "method.correction_start": 1, "method.mixture": mixture})
        eng.method.prepare_epoch(1, eng)
        assert (seen["max_iter"], seen["tol"], seen["reg_covar"]) == (3, 0.5, 0.01), mixture


@probe("method.warmup_penalty")
def test_warmup_penalty(tmp_path, monkeypatch):
    seen = []
    real = builtin.negative_entropy
    monkeypatch.setattr(builtin, "negative_entropy", lambda logits: (seen.append(1), real(logits))[1])
    eng = engine(tmp_path, **{"method.warmup_epochs": 1, "method.correction_start": 3, "method.warmup_penalty": 0.5})
    epochs(eng, 1)
    assert seen  # warm-up epoch
    seen.clear()
    epochs(eng, 1)  # premix epoch: no penalty
    assert not seen
    epochs(engine(tmp_path, **{"method.warmup_epochs": 1}), 1)
    assert not seen  # 0 = off


@probe("method.neighbours")
def test_neighbours_bank_or_batch(tmp_path):
    for where in ("bank", "batch"):
        eng = engine(tmp_path, **{"method.neighbours": where, "method.k": 2, "method.warmup_epochs": 0,
                                  "method.correction_start": 1})
        eng.method.prepare_epoch(1, eng)
        index = torch.arange(0, 64, 2)
        members = eng.method.batch_members(index, eng)
        assert members.shape == (32, 3) and torch.equal(members[:, 0], index)
        inside = torch.isin(members[:, 1:], index).all()
        if where == "batch":
            assert inside and (members[:, 1:] != members[:, :1]).all()
        else:
            assert torch.equal(members[:, 1:], eng.state.neighbours[index]) and not inside


@probe("method.guard")
def test_guard(tmp_path, monkeypatch):
    seen = []
    real = builtin.guard_weights
    monkeypatch.setattr(builtin, "guard_weights", lambda w, mode: (seen.append(mode), real(w, mode))[1])
    epochs(engine(tmp_path, **{"method.guard": "drop", "method.warmup_epochs": 0, "method.correction_start": 1}), 1)
    assert seen and set(seen) == {"drop"}


@probe("method.mixture", "method.mixture_min_class")
def test_mixture_keys(tmp_path, monkeypatch):
    seen = []
    real = phases.fit_clean_probability_per_class
    monkeypatch.setattr(phases, "fit_clean_probability_per_class",
                        lambda *a, **kw: (seen.append(kw["min_class"]), real(*a, **kw))[1])
    dotted = {"method.warmup_epochs": 0, "method.correction_start": 1}
    eng = engine(tmp_path, **dotted, **{"method.mixture": "global"})
    eng.method.prepare_epoch(1, eng)
    assert not seen
    eng = engine(tmp_path, **dotted, **{"method.mixture": "per_class", "method.mixture_min_class": 7})
    eng.method.prepare_epoch(1, eng)
    assert seen == [7]


@probe("method.bank_every")
def test_bank_every(tmp_path, monkeypatch):
    for every, want in ((1, [1, 2, 3, 4, 5]), (2, [1, 3, 5])):
        eng = engine(tmp_path, **{"method.bank_every": every, "method.warmup_epochs": 0,
                                  "method.correction_start": 1, "method.correction_period": 10})
        embedded = []
        real = eng.embed_train_set
        monkeypatch.setattr(eng, "embed_train_set", lambda r=real, e=embedded, g=eng: (e.append(g.epoch + 1), r())[1])
        for e in range(1, 6):
            eng.method.prepare_epoch(e, eng)
            eng.epoch = e
        assert embedded == want, every


def test_bank_every_epoch_when_subsampled(tmp_path):
    """With data.epoch_samples each epoch draws fresh samples: the bank (clean probabilities, neighbours) is
    refreshed every mixing epoch whatever bank_every says, so no sample trains with stale or missing neighbours."""
    for neighbours in ("bank", "batch"):
        eng = engine(tmp_path, **{"data.epoch_samples": 100, "method.bank_every": 2, "method.warmup_epochs": 1,
                                  "method.correction_start": 2, "method.correction_period": 10, "epochs": 4,
                                  "method.neighbours": neighbours})
        for e in range(1, 5):
            E.run_epoch(eng, e)
            eng.epoch = e
            active = E.active_indices(eng, e)
            if e >= 2 and neighbours == "bank":
                assert (eng.state.neighbours[active] >= 0).all(), e
            if e >= 2 and neighbours == "batch":
                assert eng.method._feature_table(eng)[active].abs().sum(1).gt(0).all(), e
                assert eng.state.features.numel() == 0  # each epoch's draw is embedded afresh: not checkpointed


# ---------------------------------------------------------------------------------------------------------------
# run-level keys


@probe("seed")
def test_seed(tmp_path):
    a = engine(tmp_path, seed=1).model.state_dict()
    b = engine(tmp_path, seed=2).model.state_dict()
    key = next(k for k in a if k.endswith("weight"))
    assert not torch.equal(a[key], b[key])


@probe("out", "checkpoint_every", "log_every")
def test_outputs_keys(tmp_path, monkeypatch):
    saved, lines = [], []
    monkeypatch.setattr(RunFolder, "save_checkpoint", lambda self, p: saved.append((self.path, p["epoch"])))
    cfg = cfg_with(tmp_path, epochs=5, checkpoint_every=2, log_every=2, out=str(tmp_path / "here"),
                   **{"method.name": "ce"})
    E.train(cfg, echo=lines.append)
    assert saved == [(tmp_path / "here", 2), (tmp_path / "here", 4), (tmp_path / "here", 5)]
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch")] == ["2/5", "4/5", "5/5"]


@probe("test_every")
def test_test_every(tmp_path):
    cfg = cfg_with(tmp_path, epochs=5, test_every=2, **{"method.name": "ce", "data.val_fraction": 0.2})
    summary = E.train(cfg, echo=None)
    from knnmix.engine.checkpoint import read_metrics

    tested = [m["epoch"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["test_acc"] is not None]
    assert tested == [2, 4, 5]
    assert summary["best_val"]["test_acc"] is not None  # the selected epoch's weights are tested at the end
    cfg0 = cfg_with(tmp_path, epochs=3, test_every=0, out=str(tmp_path / "r0"), **{"method.name": "ce"})
    s0 = E.train(cfg0, echo=None)
    assert s0["best_val"]["test_acc"] is not None
    assert [m["test_acc"] is not None for m in read_metrics(tmp_path / "r0" / "metrics.jsonl")] == [False, False, True]


@probe("device", "threads")
def test_device_and_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        eng = engine(tmp_path, device="cpu", threads=1)
        assert eng.device == torch.device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_config_key_has_a_probe():
    keys = {key for key, *_ in C.field_docs() if not key.startswith("distributed.")}
    assert keys - PROBED == set(), "config keys without a wiring test"


class Recording:
    """A method's config that records which fields its hooks read."""

    def __init__(self, cfg):
        self.cfg, self.read = cfg, set()

    def __getattr__(self, key):
        self.read.add(key)
        return getattr(self.cfg, key)


@pytest.mark.parametrize("name", ["ce", "mixup", "selc", "knnmix"])
def test_each_method_reads_the_method_keys_it_declares(tmp_path, name):
    """``Method.reads`` is what a sweep searching a method.* key is checked against (config.unread_keys): record
    which fields the method's hooks read over a run that reaches every phase (warm-up, correction, mixing)."""
    run = engine(tmp_path, **{"method.name": name, "method.warmup_epochs": 1, "method.correction_start": 2,
                              "method.correction_period": 1, "method.warmup_penalty": 0.1})
    run.method.cfg = recording = Recording(run.method.cfg)
    epochs(run, 3)
    if name == "knnmix":  # reads every field (None), some only in other settings (vote_k: a neighbours gate)
        assert run.method.reads is None and not any(key.startswith("method.") for key in C.unread_keys(run.cfg))
        assert {"k", "temperature", "correction_momentum", "warmup_penalty"} <= recording.read
    else:
        assert recording.read == run.method.reads
        assert C.unread_keys(run.cfg).keys() >= {f"method.{k}" for k in set(C.flatten(C.MethodConfig())) - {"name"}
                                                 - run.method.reads}


def test_knnmix_does_not_read_the_knobs_its_config_turns_off(tmp_path):
    """No premix mixup (mixup_alpha), a gate without the neighbour vote (vote_k), neighbours from the batch (the bank
    search): what KnnMix.unread names is what its hooks leave unread over every phase."""
    run = engine(tmp_path, **{"method.warmup_epochs": 1, "method.correction_start": 3, "method.correction_period": 1,
                              "method.premix": "ce", "method.correction_gate": "clean_prob",
                              "method.neighbours": "batch"})
    run.method.cfg = recording = Recording(run.method.cfg)
    epochs(run, 4)
    unread = {key.removeprefix("method."): why for key, why in C.unread_keys(run.cfg).items()
              if key.startswith("method.")}
    assert unread == {"mixup_alpha": "knnmix does not read it with method.premix=ce",
                      "vote_k": "knnmix does not read it with method.correction_gate=clean_prob",
                      "search": "knnmix does not read it with method.neighbours=batch and method.correction_gate="
                                "clean_prob"}
    assert {"k", "temperature", "premix"} <= recording.read and not recording.read & set(unread)
