"""The one typed, validated, serialisable run configuration.

A :class:`Config` is built from defaults, an optional YAML file, CLI shorthands and ``--set key=value`` overrides
(in that order). Unknown keys, wrong types and out-of-range values are :class:`~knnmix.errors.ConfigError`s
naming the dotted key, raised before anything is loaded or trained. The resolved config is written into every run
folder and checkpoint and logged to MLflow as flat ``section.key`` parameters.

Every field documents its unit and meaning in the comment beside it; ``docs/config.md`` is generated from them
(``knnmix config --doc``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from knnmix.errors import ConfigError, KnnmixError, did_you_mean, one_line


@dataclass
class DataConfig:
    name: str = "digits"  # registered dataset: digits, fashion-mnist, cifar10, cifar100, ...
    root: str | None = None  # data folder; null = the dataset's default location
    download: bool = False  # fetch the data with torchvision if missing (needs internet)
    val_fraction: float = 0.1  # fraction of the (noisy) training set held out as the noisy validation split, in [0, 0.5]; Python's round(fraction x images) images (an exact half goes to the even count)
    split_seed: int = 0  # seed of the validation split (fixed across runs so that runs compare on the same split)
    train_subset: int | None = None  # use a seeded subset of this many training images (before the split); null = all
    augment: bool = True  # train-time augmentation (the dataset's random crop / flip)
    num_workers: int = 0  # DataLoader worker processes per training process (0 = load in the training process)
    epoch_samples: int | None = None  # images drawn per epoch, class-balanced on the given labels (epoch_samples // classes of each class, all of a smaller one; Clothing1M: 64000); each epoch searches neighbours in its own draw; null = all
    image_size: int | None = None  # side (pixels) of the square images that file-based datasets produce (imagefolder, clothing1m, webvision); null = imagefolder: chosen from the images (32, 64 or 224), clothing1m / webvision: 224
    labels_file: str | None = None  # imagefolder: CSV with path,label columns (paths relative to root); null = one sub-folder per class
    test_root: str | None = None  # imagefolder: a second folder (or CSV) with trusted labels, reported as the test split; null = none
    on_bad_image: Literal["fail", "skip"] = "fail"  # unreadable or corrupt images: fail listing them, or skip them with a warning
    first_classes: int | None = None  # keep only the first N classes (mini-WebVision: 50); null = all


@dataclass
class NoiseConfig:
    spec: str = "auto"  # label noise added to the training labels: none | symmetric:r | asymmetric:r | pairflip:r | instance:r | cifar10n:VARIANT | cifar100n:noisy; auto = symmetric:0.4 on a benchmark's clean labels, none on labels that are already noisy (imagefolder, clothing1m, webvision)
    seed: int | None = None  # seed of the synthetic noise; null = the run's seed
    symmetric_convention: Literal["other", "any"] = "other"  # symmetric flips go to another class (other) or are redrawn among all classes (any, DivideMix)
    cifar_n_dir: str | None = None  # folder with CIFAR-10_human.pt / CIFAR-100_human.pt (cifar10n / cifar100n noise)
    instance_std: float = 0.1  # std of per-sample flip rates of instance-dependent noise (Xia et al. 2020)


@dataclass
class ModelConfig:
    name: str = "auto"  # registered network (small_cnn, preact_resnet18, preact_resnet34, resnet50); auto = the dataset's default
    pretrained: str | None = None  # local weights file to start from (no download at run time); null = random init


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adamw"] = "sgd"  # optimiser
    lr: float = 0.05  # peak learning rate for the global batch
    momentum: float = 0.9  # SGD momentum (sgd only)
    nesterov: bool = False  # Nesterov momentum (sgd only)
    weight_decay: float = 5e-4  # L2 weight decay (decoupled for adamw)
    schedule: Literal["cosine", "cosine_restarts", "constant"] = "cosine"  # learning-rate schedule over epochs
    restart_period: int = 10  # epochs per cycle of cosine_restarts (the authors: 10)
    min_lr: float = 0.0  # lowest learning rate of the cosine schedules
    batch_size: int = 128  # global training batch (split evenly across workers)
    eval_batch_size: int = 512  # batch of evaluation and feature-bank passes, per process


@dataclass
class MethodConfig:
    name: str = "knnmix"  # training method: ce, mixup, selc, knnmix
    warmup_epochs: int = 10  # epochs of plain cross-entropy on the given labels before the mixture fit (knnmix)
    warmup_penalty: float = 0.0  # weight of the negative-entropy penalty added to the warm-up loss (DivideMix's remedy for asymmetric noise); 0 = off
    premix: Literal["mixup", "knn", "ce"] = "mixup"  # what knnmix trains between warm-up and correction_start: random mixup (the authors), neighbour mixing with uncorrected targets, or cross-entropy
    k: int = 1  # neighbours mixed with each sample (the authors: 1)
    neighbours: Literal["bank", "batch"] = "bank"  # where neighbours come from: the whole training set (exact search over the gathered feature bank) or the sample's own mini-batch (the authors' MixNN; per worker under data parallelism)
    temperature: float = 1.0  # mixing temperature T > 0: weights ∝ clean_prob^(1/T); T -> 0 picks the cleanest member, T = 1 the authors' rule
    guard: Literal["none", "scale", "drop"] = "none"  # synthetic samples whose members are all likely noisy: keep (none), weight each sample's loss by its cleanest member's clean probability (scale), or drop those whose cleanest member is below 0.5 (drop)
    mixup_alpha: float = 1.0  # Beta(alpha, alpha) of random mixup (mixup method and knnmix premix)
    correction_start: int = 60  # first epoch (1-based) of knnmix's neighbour mixing and of soft-target correction (knnmix, selc); knnmix skips correction epochs inside its warm-up
    correction_period: int = 10  # correct soft targets every this many epochs from correction_start (the authors: 10; SELC: 1)
    correction_momentum: float = 0.9  # m in t <- m t + (1 - m) softmax(f(x)) (the authors and SELC: 0.9)
    correction_gate: Literal["none", "clean_prob", "neighbours", "clean_prob+neighbours"] = "clean_prob+neighbours"  # knnmix: what share of the correction step each target takes: all of it (none: SELC, the authors); 1 - its clean probability (clean_prob: DivideMix's label refinement; a sample the mixture holds clean keeps its label); the share of its method.vote_k feature-space neighbours whose current label is the class predicted for it (neighbours); or the product of both (clean_prob+neighbours: the default since 2026-12-01, chosen on noisy validation)
    vote_k: int = 10  # neighbours gates: feature-space neighbours (self excluded) whose current labels vote on each sample's correction
    mixture: Literal["global", "per_class"] = "per_class"  # clean probabilities from one two-component mixture per current corrected class (classes below mixture_min_class fall back to the global fit), or one over all losses (the authors: global)
    mixture_min_class: int = 20  # per_class: fewest samples of a class for it to get its own mixture
    loss_window: int = 1  # average the normalised losses of this many fitted epochs (epochs that embed the training set) before the mixture fit (the authors use 5 at 80% noise)
    gmm_max_iter: int = 10  # EM iterations of the two-component mixture fit
    gmm_tol: float = 0.01  # EM convergence tolerance
    gmm_reg_covar: float = 5e-4  # variance floor of the mixture components
    bank_every: int = 2  # in the mixing phase, embed the training set and refit the mixture and neighbours every this many epochs (and on every correction epoch; every epoch with data.epoch_samples); the authors: 1 (every epoch); 2 halves the extra embedding pass
    search: Literal["faiss", "torch"] = "faiss"  # exact cosine neighbour search: faiss IndexFlatIP on CPU, or torch matmul+topk on the training device (GPU)


@dataclass
class DistributedConfig:
    workers: int = 0  # Ray Train workers; 0 = one plain process, no Ray
    use_gpu: bool = False  # one GPU per worker (NCCL); otherwise CPU workers (gloo)
    cpus_per_worker: int = 1  # CPUs reserved per worker (also torch/faiss threads per worker)
    max_failures: int = 0  # worker failures tolerated; the run restarts from its latest checkpoint each time (-1 = forever)
    storage_path: str | None = None  # absolute folder (or URI) for Ray Train checkpoints; null = <out>/ray
    name: str | None = None  # Ray Train run name; a run with the same name and storage continues from its latest checkpoint; null = the out folder's name
    num_to_keep: int = 2  # checkpoints kept by Ray Train, best by validation accuracy


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    epochs: int = 100  # training epochs; a resume may raise it (the cosine schedule then stretches to the new length)
    seed: int = 0  # seed of initialisation, batching, augmentation (and of the noise unless noise.seed is set); 0 to 1e8
    out: str = "runs/knnmix"  # run folder: config, metrics, checkpoint, label issues
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    threads: int = 0  # torch / faiss CPU threads per process; 0 = leave the library default
    checkpoint_every: int = 1  # write the resumable checkpoint every this many epochs (and at the end)
    log_every: int = 1  # print a progress line every this many epochs
    test_every: int = 1  # evaluate the test split every this many epochs (always at the last; 0 = only the last, and the validation-selected weights at the end)


# ----------------------------------------------------------------------------------------------------------------
# Building and validating

#: The embedded presets (``--config digits``): YAML files shipped inside the package.
PRESETS = Path(__file__).parent / "presets"


def preset_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of an embedded preset (``knnmix config --presets`` lists them)."""
    if not isinstance(name_or_path, (str, Path)):
        raise ConfigError(f"a config is a file path or a preset name, got {name_or_path!r}")
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return p
    preset = PRESETS / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = sorted(x.stem for x in PRESETS.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor an embedded preset ({', '.join(names)})"
                      f"{did_you_mean(name_or_path, names)}")


def from_dict(data: dict[str, Any] | Config | None = None) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial, nested) dict, or check a :class:`Config` whose
    attributes may have been set by hand (a validated copy)."""
    cfg = _build(Config, to_dict(data) if isinstance(data, Config) else data or {}, "")
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None, **shorthands: Any) -> Config:
    """Defaults <- YAML file (or embedded preset name, e.g. ``"digits"``) <- shorthands (dotted keys, ``None`` = not
    given) <- ``key=value`` overrides (a list of strings)."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r} (write "
                          f"[{overrides!r}])")
    what = f"config file {str(path)!r}"
    data = read_yaml(preset_path(str(path)), what) if path is not None else {}
    try:
        _build(Config, data, "")  # the file's own keys and types, named as the file's before options change them
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    for key, value in shorthands.items():
        if value is not None:
            set_dotted(data, key, value)
    for item in overrides or []:
        set_dotted(data, *parse_override(item))
    return from_dict(data)


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (``{}`` when it is empty); ``what`` names the file in errors."""
    if path.is_dir():
        raise ConfigError(f"{what} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} cannot be read as YAML text (UTF-8): {one_line(exc, 200)}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {one_line(exc)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of keys, got {type(data).__name__}")
    return data or {}


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (PyYAML would keep the last one
    silently: a second ``method:`` section would replace the whole first one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {key!r} is given twice (lines {lines[key]} and {line}); YAML allows it once")
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_override(item: str) -> tuple[str, Any]:
    """``"method.k=5"`` -> ``("method.k", 5)``; the value is read as YAML (numbers, booleans, null, lists)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. method.k=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) and not raw.strip().startswith("{"):  # "symmetric:" is a text, not a YAML mapping
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``; the key is checked later by :func:`from_dict`."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


#: The config as plain nested dicts (YAML/JSON serialisable).
to_dict = dataclasses.asdict


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Config | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method.k": 1, ...}``: the form logged as MLflow parameters."""
    data = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(old: dict[str, Any], new: dict[str, Any], shown: int, ignore: tuple[str, ...] = ()) -> str:
    """``"key: old -> new, ..."`` for the first ``shown`` dotted keys whose values differ between two nested dicts
    (``""`` when none do), leaving out the keys in ``ignore`` and, for an entry ending in ``.``, its whole section."""
    a, b = flatten(old), flatten(new)
    sections = tuple(k for k in ignore if k.endswith("."))
    diff = [k for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in ignore and not k.startswith(sections)]
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:shown])


def replace(cfg: Config | dict[str, Any], **dotted: Any) -> Config:
    """A validated copy of ``cfg`` (a :class:`Config`, or a nested dict of its keys) with dotted keys changed:
    ``replace(cfg, **{"method.k": 3})``."""
    if not isinstance(cfg, (Config, dict)):
        raise ConfigError(f"replace needs a knnmix.config.Config (or a dict of its keys), got {type(cfg).__name__}")
    data = to_dict(cfg) if isinstance(cfg, Config) else copy.deepcopy(cfg)
    for key, value in dotted.items():
        set_dotted(data, key, value)
    return from_dict(data)


def absolute_paths(cfg: Config) -> dict[str, str]:
    """The config's local paths, made absolute against this process's working directory, where the loaders look
    first (``data.labels_file`` and ``data.test_root`` not found there stay relative: the loaders then look below
    ``data.root``)."""
    changes = {}
    for key in (k for k in PATH_KEYS if k != "distributed.storage_path"):  # (absolute or a URI: validate checks)
        section, _, leaf = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, leaf)
        below_root = cfg.data.root is not None and value is not None and not Path(value).expanduser().exists()
        if key in ("data.labels_file", "data.test_root") and below_root:
            continue
        if value is not None and "://" not in value and not Path(value).expanduser().is_absolute():
            changes[key] = str(Path(value).expanduser().absolute())
    return changes


def _build(cls: type, data: Any, path: str) -> Any:
    """An instance of dataclass ``cls`` from plain data, every field coerced to its annotated type.

    Also builds the search-space schema (:mod:`knnmix.spaces`): fields without a default are required, and
    ``list[T]``, ``dict[str, T]``, ``Any`` and unions of a dataclass and a scalar are understood.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        key = unknown[0]
        close = [f for f in fields if f.startswith(key)][:1] or difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {_join(path, close[0])!r}?)" if close else ""
        noun = getattr(cls, "_noun", "config key")  # the search-space schema says "field"
        raise ConfigError(f"unknown {noun} {_join(path, key)!r}{hint}")
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: missing (required)")
    kwargs = {name: _coerce(hints[name], data[name], _join(path, name)) for name in fields if name in data}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last_error = None  # the last member's: for int | float, a bad float is "expected a finite number"
        for arg in args:
            if arg is type(None) or (dataclasses.is_dataclass(arg) and not isinstance(value, dict)):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                last_error = exc
        raise last_error or ConfigError(f"{path}: expected {_type_name(tp)}, got {_show(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_show(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(item, v, _join(path, str(k))) for k, v in value.items()}
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {_show(value)} is not one of {', '.join(map(str, choices))}")
        return choices[choices.index(value)]  # the choice itself (numpy's str_ equals it, but YAML cannot write it)
    if tp in _EXPECTED:  # bool, int, str: taken as they are (true is not an integer), numpy's as the plain ones
        if tp is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if tp is bool and (isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"):
            return bool(value)
        if tp is str and isinstance(value, str):
            return str.__str__(value)  # (of a str subclass, e.g. numpy's str_: its text)
        raise ConfigError(f"{path}: expected {_EXPECTED[tp]}, got {_show(value)}")
    if tp is float:
        try:  # YAML 1.1 reads "1e-3" as a string; numpy's floats are numbers.Real
            number = float(value) if isinstance(value, (numbers.Real, str)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {_show(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
        return number
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in this module, not user input


#: What the error of a bool, int or str field says it expected.
_EXPECTED: dict[Any, str] = {bool: "true or false", int: "an integer", str: "a string"}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


# ----------------------------------------------------------------------------------------------------------------
# Range checks (types are already right when these run)


def _check(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is out of range; {need}")


#: Lowest value of each numeric key: ``(bound, open (>) rather than closed (>=), a note for the error)``.
LOWER_BOUNDS: dict[str, tuple[float, bool, str]] = {
    "data.val_fraction": (0, False, " and <= 0.5"), "data.train_subset": (2, False, " (or null)"),
    "data.num_workers": (0, False, ""), "data.epoch_samples": (2, False, " (or null)"),
    "data.image_size": (8, False, " pixels (or null)"), "data.first_classes": (2, False, " (or null)"),
    "noise.instance_std": (0, True, ""), "optim.lr": (0, True, ""), "optim.weight_decay": (0, False, ""),
    "optim.restart_period": (1, False, ""), "optim.batch_size": (1, False, ""), "optim.eval_batch_size": (1, False, ""),
    "method.warmup_epochs": (0, False, ""), "method.warmup_penalty": (0, False, " (0 = off)"),
    "method.mixture_min_class": (2, False, ""), "method.bank_every": (1, False, ""), "method.k": (1, False, ""),
    "method.temperature": (0, True, ""), "method.mixup_alpha": (0, True, ""),
    "method.correction_start": (1, False, " (epochs count from 1)"), "method.correction_period": (1, False, ""),
    "method.loss_window": (1, False, ""), "method.vote_k": (1, False, ""), "method.gmm_max_iter": (1, False, ""),
    "method.gmm_tol": (0, True, ""), "method.gmm_reg_covar": (0, True, ""),
    "distributed.workers": (0, False, " (0: no Ray; N: Ray Train workers)"),
    "distributed.cpus_per_worker": (1, False, ""), "distributed.max_failures": (-1, False, " (-1: forever)"),
    "distributed.num_to_keep": (1, False, ""), "epochs": (1, False, ""), "threads": (0, False, ""),
    "checkpoint_every": (1, False, ""), "log_every": (1, False, ""), "test_every": (0, False, ""),
    "seed": (0, False, ""), "noise.seed": (0, False, " (or null)"), "data.split_seed": (0, False, ""),
}
MAX_INT = 2**31 - 1
#: Keys that name local files or folders (or URIs).
PATH_KEYS = ("out", "data.root", "data.labels_file", "data.test_root", "noise.cifar_n_dir", "model.pretrained",
             "distributed.storage_path")
#: Largest ``seed``: the per-batch seeds derived from it (about ``seed * 1e11``) must fit torch's 64-bit seeds.
MAX_SEED = 10**8


#: Data sets whose loader returns a validation split of their own (a fraction of the training images is not taken).
SHIPPED_VALIDATION = ("clothing1m",)
#: The built-in data sets' families (their loaders' ``DatasetBundle.family``): asymmetric noise's class maps and the
#: CIFAR-N label files are a family's, so a mismatch is refused before any image is read.
DATA_FAMILIES = {"digits": "digits", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10", "cifar100": "cifar100",
                 "imagefolder": "generic", "clothing1m": "generic", "webvision": "generic"}


def validate(cfg: Config) -> None:
    """Range and cross-field checks that need no data. Raises :class:`ConfigError` naming the key."""
    d, o, m, x = cfg.data, cfg.optim, cfg.method, cfg.distributed
    _check(d.val_fraction <= 0.5, "data.val_fraction", d.val_fraction, "use a fraction in [0, 0.5]")
    if d.name in SHIPPED_VALIDATION and d.val_fraction > 0:  # (the loader would find it out after reading every image)
        raise ConfigError(f"data.val_fraction={d.val_fraction}: {d.name} ships its own validation split; set "
                          "data.val_fraction=0")
    for key, (low, strict, note) in LOWER_BOUNDS.items():
        value = operator.attrgetter(key)(cfg)
        _check(value is None or value > low or (value == low and not strict), key, value,
               f"use {'>' if strict else '>='} {low}{note}")
        if key not in ("seed", "noise.seed", "data.split_seed"):  # (numpy's seeds take any size; seed: MAX_SEED)
            _check(not isinstance(value, int) or value <= MAX_INT, key, value, f"use <= {MAX_INT}")  # torch's C ints
    for key in PATH_KEYS:  # "" is the working directory to pathlib: an unset shell variable wrote a run there
        value = operator.attrgetter(key)(cfg)
        if value == "":
            raise ConfigError(f"{key}: an empty path; name a file or folder (an unset shell variable?)")
        if value is not None and "://" in value and key != "distributed.storage_path":  # pathlib: ./s3:/bucket/...
            raise ConfigError(f"{key}: {value!r} is a URI, but knnmix reads and writes it as a local (or mounted) "
                              "path; only distributed.storage_path may be a URI (Ray Train uploads its checkpoints)")
    _check(cfg.seed <= MAX_SEED, "seed", cfg.seed, f"use an integer in [0, {MAX_SEED}]")
    _check(0 <= o.momentum < 1, "optim.momentum", o.momentum, "use a value in [0, 1)")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", o.min_lr, f"use a value in [0, optim.lr={o.lr}]")
    _check(0 <= m.correction_momentum < 1, "method.correction_momentum", m.correction_momentum, "use [0, 1)")
    if x.storage_path is not None and "://" not in x.storage_path and not Path(x.storage_path).is_absolute():
        raise ConfigError(f"distributed.storage_path: {x.storage_path!r} must be an absolute path or a URI (Ray Train "
                          "needs it)")
    if x.name is not None and (x.name in ("", ".", "..") or "/" in x.name or "\\" in x.name):
        raise ConfigError(f"distributed.name: {x.name!r} must be one folder name (no '/', not '.' or '..'): the run's "
                          "folder inside distributed.storage_path, which --overwrite deletes")
    if o.batch_size % max(x.workers, 1):
        raise ConfigError(f"optim.batch_size: {o.batch_size} does not split evenly over "
                          f"distributed.workers={x.workers}")
    # Names are checked against the registries of the parts, imported lazily to keep this module light.
    from knnmix.data import DATASETS
    from knnmix.methods import METHODS
    from knnmix.models import MODELS
    from knnmix.noise import CIFAR_N, check_noise_family, parse_noise_spec

    as_config_error("method.name", lambda: METHODS.get(m.name))
    if cfg.noise.spec != "auto":  # (what the loader and the noise would find out only after reading every image)
        spec = as_config_error("noise.spec", lambda: parse_noise_spec(cfg.noise.spec))
        if d.name in DATA_FAMILIES:
            as_config_error(f"noise.spec on {d.name}", lambda: check_noise_family(spec, DATA_FAMILIES[d.name]))
        if spec.kind in CIFAR_N and cfg.noise.cifar_n_dir is None:
            raise ConfigError(f"noise.cifar_n_dir: noise.spec={spec} needs the folder that holds "
                              f"{CIFAR_N[spec.kind].filename}, CIFAR-N's human labels (--set noise.cifar_n_dir=DIR)")
    as_config_error("data.name", lambda: DATASETS.get(d.name))
    if cfg.model.name != "auto":
        as_config_error("model.name", lambda: MODELS.get(cfg.model.name))


#: The keys whose value decides which other keys are read (:func:`unread_keys`).
DECIDING_KEYS = ("method.name", "method.premix", "method.correction_gate", "method.mixture", "method.neighbours",
                 "optim.optimizer", "optim.schedule", "noise.spec")


def unread_keys(cfg: Config) -> dict[str, str]:
    """Keys whose value the parts ``cfg`` chooses never read, as ``{key: why}``, e.g. ``optim.momentum: "only sgd
    reads it (optim.optimizer=adamw)"``. A sweep that searches one is refused, a ``--set`` of one warns. The
    method's own fields are its :meth:`~knnmix.methods.Method.unread` (a plug-in method's factory: none)."""
    from knnmix.methods import METHODS, Method

    o, m, unread = cfg.optim, cfg.method, {}
    factory = METHODS.get(m.name)
    if isinstance(factory, type) and issubclass(factory, Method):
        unread.update({f"method.{key}": why for key, why in factory.unread(m).items()})
    if o.optimizer != "sgd":
        unread.update({f"optim.{key}": f"only sgd reads it (optim.optimizer={o.optimizer})"
                       for key in ("momentum", "nesterov")})
    if o.schedule != "cosine_restarts":
        unread["optim.restart_period"] = f"only cosine_restarts reads it (optim.schedule={o.schedule})"
    if o.schedule == "constant":
        unread["optim.min_lr"] = "a constant schedule does not read it"
    from knnmix.noise import CIFAR_N, NOISE_KINDS

    kind, spec = cfg.noise.spec.split(":")[0].strip().lower(), cfg.noise.spec  # (as parse_noise_spec reads it)
    if kind not in (*NOISE_KINDS, "auto"):  # a plug-in noise model may read any noise.* key
        return unread
    human = kind in CIFAR_N
    if kind != "instance":
        unread["noise.instance_std"] = f"only instance noise reads it (noise.spec={spec})"
    if kind not in ("symmetric", "auto"):  # (auto: symmetric on a benchmark's clean labels)
        unread["noise.symmetric_convention"] = f"only symmetric noise reads it (noise.spec={spec})"
    if not human:
        unread["noise.cifar_n_dir"] = f"only cifar10n and cifar100n noise read it (noise.spec={spec})"
    if kind == "none" or human:
        unread["noise.seed"] = f"noise.spec={spec} draws nothing at random"
    return unread


def as_config_error(where: str, build: typing.Callable[[], Any],
                    errors: tuple[type[Exception], ...] = (KnnmixError, OSError)) -> Any:
    """``build()``, with whatever ``errors`` it raises (by default a user's mistake: a bad name, noise spec or
    config file) as one :class:`ConfigError` naming ``where``."""
    try:
        return build()
    except errors as exc:
        raise ConfigError(f"{where}: {one_line(exc)}") from None


def field_docs() -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, meaning)`` of every field, read from the comments in this file."""
    comments: dict[tuple[str, str], str] = {}
    current = ""
    for line in Path(__file__).read_text().splitlines():
        if head := re.match(r"^class (\w+)\b", line):
            current = head.group(1)
        elif (fld := re.match(r"^    (\w+): .*?#\s*(.+)$", line)) and current:
            comments[current, fld.group(1)] = fld.group(2).strip()

    def rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
        out = []
        for name, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                out += rows(typing.cast(type, tp), f"{prefix}{name}.")
            else:
                default = repr(getattr(cls, name))  # every leaf field has a plain default
                out.append((prefix + name, _type_name(tp), default, comments.get((cls.__name__, name), "")))
        return out

    return rows(Config, "")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return " / ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))
