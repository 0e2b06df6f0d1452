"""Search spaces of hyper-parameter sweeps: the schema, parsing and validation (no Ray, no data).

A search space is a YAML file (``search_spaces/*.yaml``, documented field by field in ``search_spaces/README.md``)
naming the base run, the noise settings to sweep across, the number of trials per noise setting, the ASHA early
stopping settings, the sampler seed and the distributions of the searched config keys. :func:`load_space` reads
one, applies ``--set`` overrides and validates everything against the typed config, so that every mistake is one
:class:`~knnmix.errors.ConfigError` line naming the file and the field (``search space smoke.yaml:
params.method.k.high: 0 is below low=1``) before Ray starts.

Selection is on the noisy-validation accuracy only: ``metric`` can only be ``val_acc`` (mode ``max``); the test
split is reported, never selected on.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from knnmix import config as C
from knnmix.errors import ConfigError, KnnmixError

#: The only metric a sweep may select on (Tune, Optuna and ASHA all use it), and its direction.
METRIC = "val_acc"
MODE = "max"

#: Where ``knnmix sweep NAME`` looks for ``NAME.yaml`` (the repository's ``search_spaces/`` folder).
SPACES_DIR = Path(__file__).resolve().parents[3] / "search_spaces"

#: Prefix of ``--set`` overrides that change the space file itself rather than the base run's config.
SPACE_PREFIX = "sweep."

TOP_FIELDS = (
    "name", "description", "experiment", "base", "noise", "trials", "seed", "metric", "mode",
    "max_concurrent_trials", "startup_trials", "asha", "start_with", "params",
)
BASE_FIELDS = ("config", "set")
NOISE_FIELDS = ("spec", "set")
ASHA_FIELDS = ("grace_period", "reduction_factor", "max_t", "brackets")
DIST_FIELDS: dict[str, tuple[str, ...]] = {
    "int": ("type", "low", "high", "step", "log"),
    "uniform": ("type", "low", "high", "step"),
    "loguniform": ("type", "low", "high"),
    "choice": ("type", "values"),
}

#: Config keys a sweep sets itself (per trial or per noise setting): they cannot be searched.
FIXED_KEYS = ("out", "noise.spec", "epochs", "device", "threads", "checkpoint_every", "log_every")
FIXED_PREFIXES = ("distributed.",)
#: Datasets that ship their own validation split (``data.val_fraction`` must then be 0).
SHIPPED_VALIDATION = ("clothing1m", "webvision")


# ----------------------------------------------------------------------------------------------------------------
# The parsed space


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str  # dotted config key, e.g. method.k
    type: str  # int | uniform | loguniform | choice
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The Optuna distribution (``IntDistribution``, ``FloatDistribution`` or ``CategoricalDistribution``)."""
        import optuna

        d = optuna.distributions
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "uniform":
            return d.FloatDistribution(float(self.low), float(self.high), step=self.step)
        if self.type == "loguniform":
            return d.FloatDistribution(float(self.low), float(self.high), log=True)
        return d.CategoricalDistribution(list(self.values))

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice of {list(self.values)}"
        extra = f", step {self.step}" if self.step is not None else ""
        extra += ", log scale" if self.log else ""
        return f"{self.type} in [{self.low}, {self.high}]{extra}"

    def to_dict(self) -> dict[str, Any]:
        if self.type == "choice":
            return {"type": "choice", "values": list(self.values)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class NoiseSetting:
    """One noise setting: its own Optuna study, Tune experiment and MLflow parent run."""

    spec: str  # canonical noise spec, e.g. symmetric:0.2
    overrides: dict[str, Any] = field(default_factory=dict)  # extra config keys for this setting only

    @property
    def slug(self) -> str:
        """Folder-safe name: ``symmetric:0.2`` -> ``symmetric-0.2``."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec.replace(":", "-"))

    def to_dict(self) -> str | dict[str, Any]:
        return {"spec": self.spec, "set": dict(self.overrides)} if self.overrides else self.spec


@dataclass(frozen=True)
class Asha:
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # 1/reduction_factor of the trials pass each rung
    max_t: int | None = None  # the longest trial, in epochs; null = the base run's epochs
    brackets: int = 1  # ASHA brackets

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    label: str  # how errors name the file (its file name)
    base_config: str | None  # absolute path of the base config file (a preset resolved to its file), or None
    base_set: dict[str, Any]  # flat dotted config overrides of the base run (space file, then --set)
    noise: tuple[NoiseSetting, ...]
    trials: int
    params: dict[str, Param]
    seed: int = 0
    asha: Asha = Asha()
    description: str = ""
    experiment: str | None = None
    max_concurrent_trials: int | None = None
    startup_trials: int | None = None
    start_with: tuple[dict[str, Any], ...] = ()
    metric: str = METRIC
    mode: str = MODE

    # --------------------------------------------------------------------------------------------------------
    def base(self) -> C.Config:
        """The validated base config (before the noise setting and the sampled values)."""
        return _base_config(self.base_config, self.base_set, self.label)

    def setting_config(self, setting: NoiseSetting) -> C.Config:
        """The base config of one noise setting (its spec and overrides applied)."""
        return C.replace(self.base(), **{"noise.spec": setting.spec, **setting.overrides})

    @property
    def epochs(self) -> int:
        return self.base().epochs

    @property
    def max_t(self) -> int:
        return self.asha.max_t if self.asha.max_t is not None else self.epochs

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"knnmix-sweep-{self.name}"

    def distributions(self) -> dict[str, Any]:
        return {k: p.distribution() for k, p in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain data; :func:`parse_space` of it gives an equal space."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.experiment:
            out["experiment"] = self.experiment
        out["base"] = {"config": self.base_config, "set": dict(self.base_set)}
        out["noise"] = [s.to_dict() for s in self.noise]
        out["trials"] = self.trials
        out["seed"] = self.seed
        out["metric"] = self.metric
        out["mode"] = self.mode
        out["max_concurrent_trials"] = self.max_concurrent_trials
        out["startup_trials"] = self.startup_trials
        out["asha"] = self.asha.to_dict()
        out["start_with"] = [dict(p) for p in self.start_with]
        out["params"] = {k: p.to_dict() for k, p in self.params.items()}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A space file path, or the name of a file in the repository's ``search_spaces/`` (``smoke``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1:
        candidate = SPACES_DIR / f"{p.name}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"search space {str(name_or_path)!r} does not exist")


def split_overrides(items: list[str] | None) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """``--set`` items -> (space overrides ``sweep.FIELD=...`` without the prefix, base config overrides)."""
    space, base = [], []
    for item in items or []:
        key, value = C.parse_override(item)
        if key.startswith(SPACE_PREFIX):
            space.append((key[len(SPACE_PREFIX):], value))
        else:
            base.append((key, value))
    return space, base


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Read, override (``--set``) and validate a search space file."""
    p = resolve_space_path(path)
    label = p.name
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {label}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"search space {label}: expected a mapping of fields, got {_show(data)}")
    space_sets, base_sets = split_overrides(overrides)
    for key, value in space_sets:
        _apply_space_override(data, key, value, label)
    if base_sets:
        base = data.get("base")
        if base is None:
            base = data["base"] = {}
        if not isinstance(base, dict):
            raise ConfigError(f"search space {label}: base: expected a mapping, got {_show(base)}")
        sets = base.get("set")
        sets = {} if sets is None else dict(_flat_mapping(sets, f"search space {label}: base.set"))
        sets.update(base_sets)
        base["set"] = sets
    return parse_space(data, label=label, root=p.parent)


def parse_space(data: dict[str, Any], *, label: str, root: Path | None = None) -> SearchSpace:
    """Validate a space given as plain data (``root``: the folder relative ``base.config`` paths start from)."""
    err = _Errors(label)
    err.unknown(data, TOP_FIELDS, "")
    name = data.get("name", Path(label).stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        err("name", f"{_show(name)} must be a word of letters, digits, '.', '_' or '-'")
    description = _typed(err, data, "description", str, "a string", default="")
    experiment = _typed(err, data, "experiment", str, "a string (an MLflow experiment name)", default=None)

    # -- the base run ------------------------------------------------------------------------------------------
    base = data.get("base", {}) or {}
    if not isinstance(base, dict):
        err("base", f"expected a mapping with config and set, got {_show(base)}")
    err.unknown(base, BASE_FIELDS, "base.")
    config_path = _base_path(err, base.get("config"), root)
    base_set = dict(_flat_mapping(base.get("set") or {}, f"search space {label}: base.set"))
    for key in base_set:
        _check_config_key(err, f"base.set.{key}", key)
    base_cfg = _base_config(config_path, base_set, label)
    if base_cfg.distributed.workers < 1:
        err("base.set.distributed.workers", "each trial is a Ray Train run: set distributed.workers >= 1 "
            "(e.g. --set distributed.workers=2)")
    if base_cfg.data.val_fraction <= 0 and base_cfg.data.name not in SHIPPED_VALIDATION:
        err("base.set.data.val_fraction", f"sweeps select on the noisy-validation accuracy ({METRIC}): use a "
            f"validation fraction > 0 ({base_cfg.data.name} ships no validation split)")

    # -- selection ---------------------------------------------------------------------------------------------
    metric = data.get("metric", METRIC)
    if metric != METRIC:
        err("metric", f"{_show(metric)} cannot be selected on: sweeps select on the noisy-validation accuracy "
            f"{METRIC!r} only (the test split is reported, never used to select)")
    mode = data.get("mode", MODE)
    if mode != MODE:
        err("mode", f"{_show(mode)}: {METRIC} is maximised; use {MODE!r}")
    trials = _int(err, data, "trials", minimum=1, required=True)
    seed = _int(err, data, "seed", minimum=0, default=0)
    max_concurrent = _int(err, data, "max_concurrent_trials", minimum=1, default=None)
    startup = _int(err, data, "startup_trials", minimum=0, default=None)

    # -- noise settings ----------------------------------------------------------------------------------------
    noise_raw = data.get("noise")
    if noise_raw is None:
        err("noise", "missing: list the noise settings to sweep across, e.g. [symmetric:0.2, symmetric:0.5]")
    if isinstance(noise_raw, str):
        noise_raw = [noise_raw]
    if not isinstance(noise_raw, list) or not noise_raw:
        err("noise", f"expected a non-empty list of noise specs, got {_show(noise_raw)}")
    settings: list[NoiseSetting] = []
    for i, item in enumerate(noise_raw):
        settings.append(_noise_setting(err, f"noise[{i}]", item, base_cfg))
    seen: dict[str, int] = {}
    for i, s in enumerate(settings):
        if s.slug in seen:
            err(f"noise[{i}]", f"{s.spec!r} is listed twice (also noise[{seen[s.slug]}])")
        seen[s.slug] = i

    # -- distributions -----------------------------------------------------------------------------------------
    params_raw = data.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        err("params", f"expected a mapping of config keys to distributions, got {_show(params_raw)}")
    params: dict[str, Param] = {}
    for key, spec in params_raw.items():
        params[str(key)] = _param(err, str(key), spec, base_cfg)
    for i, s in enumerate(settings):
        clash = sorted(set(s.overrides) & set(params))
        if clash:
            err(f"noise[{i}].set.{clash[0]}", "is searched (params); a noise setting cannot fix it")

    # -- ASHA --------------------------------------------------------------------------------------------------
    asha_raw = data.get("asha", {}) or {}
    if not isinstance(asha_raw, dict):
        err("asha", f"expected a mapping, got {_show(asha_raw)}")
    err.unknown(asha_raw, ASHA_FIELDS, "asha.")
    grace = _int(err, asha_raw, "grace_period", minimum=1, default=1, prefix="asha.")
    rf = _number(err, asha_raw, "reduction_factor", default=2.0, prefix="asha.")
    if not rf > 1:
        err("asha.reduction_factor", f"{rf!r} must be > 1")
    max_t = _int(err, asha_raw, "max_t", minimum=1, default=None, prefix="asha.")
    brackets = _int(err, asha_raw, "brackets", minimum=1, default=1, prefix="asha.")
    epochs = max(base_cfg.epochs, *(C.replace(base_cfg, **s.overrides).epochs for s in settings))
    if max_t is not None and max_t > epochs:
        err("asha.max_t", f"{max_t} is more than the base run's epochs={epochs}")
    if grace > (max_t or epochs):
        err("asha.grace_period", f"{grace} is more than the longest trial ({max_t or epochs} epochs)")

    # -- start points ------------------------------------------------------------------------------------------
    start_raw = data.get("start_with", []) or []
    if not isinstance(start_raw, list):
        err("start_with", f"expected a list of {{key: value}} points, got {_show(start_raw)}")
    start: list[dict[str, Any]] = []
    for i, point in enumerate(start_raw):
        start.append(_start_point(err, f"start_with[{i}]", point, params))

    return SearchSpace(
        name=name, label=label, base_config=config_path, base_set=base_set, noise=tuple(settings), trials=trials,
        params=params, seed=seed, asha=Asha(grace, float(rf), max_t, brackets), description=description,
        experiment=experiment, max_concurrent_trials=max_concurrent, startup_trials=startup,
        start_with=tuple(start), metric=metric, mode=mode,
    )


# ----------------------------------------------------------------------------------------------------------------
# Pieces


class _Errors:
    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, where: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"search space {self.label}: {where}: {message}")

    def unknown(self, data: Any, allowed: tuple[str, ...], prefix: str) -> None:
        if not isinstance(data, dict):
            return
        for key in data:
            if key not in allowed:
                close = [a for a in allowed if a.startswith(str(key))] or difflib.get_close_matches(
                    str(key), allowed, n=1)
                hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
                self(f"{prefix}{key}", f"unknown field{hint}; fields here: {', '.join(allowed)}")


def _show(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def _typed(err: _Errors, data: dict, key: str, tp: type, what: str, default: Any) -> Any:
    value = data.get(key, default)
    if value is not default and not isinstance(value, tp):
        err(key, f"expected {what}, got {_show(value)}")
    return value


def _int(
    err: _Errors, data: dict, key: str, *, minimum: int, default: Any = None, required: bool = False,
    prefix: str = "",
) -> Any:
    if key not in data or data[key] is None:
        if required:
            err(prefix + key, "missing: an integer is required")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        err(prefix + key, f"expected an integer, got {_show(value)}")
    if value < minimum:
        err(prefix + key, f"{value} is out of range; use >= {minimum}")
    return value


def _as_number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _number(err: _Errors, data: dict, key: str, *, default: Any, prefix: str = "") -> Any:
    if key not in data or data[key] is None:
        return default
    value = _as_number(data[key])
    if value is None or not math.isfinite(value):
        err(prefix + key, f"expected a number, got {_show(data[key])}")
    return value


def _flat_mapping(data: Any, where: str) -> dict[str, Any]:
    """``{"method": {"k": 3}, "optim.lr": 0.1}`` -> ``{"method.k": 3, "optim.lr": 0.1}``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {_show(data)}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and _config_type(str(key)) is None:
            for sub, v in _flat_mapping(value, f"{where}.{key}").items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[str(key)] = value
    return flat


def _config_type(key: str) -> Any:
    """The annotated type of a dotted config key (a leaf), or ``None`` if it is not one."""
    cls: Any = C.Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return None if dataclasses.is_dataclass(cls) else cls


def config_keys() -> list[str]:
    return [row[0] for row in C.field_docs()]


def _check_config_key(err: _Errors, where: str, key: str) -> None:
    if _config_type(key) is None:
        close = difflib.get_close_matches(key, config_keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        err(where, f"{key!r} is not a config key{hint}; `knnmix config --doc` lists them")


def _base_path(err: _Errors, value: Any, root: Path | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        err("base.config", f"expected a preset name or a config file path, got {_show(value)}")
    p = Path(value).expanduser()
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        if not p.is_absolute() and root is not None:
            p = root / p
        if not p.is_file():
            err("base.config", f"config file {str(p)!r} does not exist")
        return str(p.resolve())
    from knnmix.cli import preset_path

    try:
        return str(preset_path(value).resolve())
    except KnnmixError as exc:
        err("base.config", str(exc))


def _base_config(path: str | None, sets: dict[str, Any], label: str) -> C.Config:
    data: dict[str, Any] = {}
    try:
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path!r} must hold a mapping of keys")
            data = loaded
        for key, value in sets.items():
            C.set_dotted(data, key, value)
        return C.from_dict(data)
    except (ConfigError, yaml.YAMLError) as exc:
        raise ConfigError(f"search space {label}: base: {' '.join(str(exc).split())}") from None


def _fixed(key: str) -> bool:
    return key in FIXED_KEYS or any(key.startswith(p) for p in FIXED_PREFIXES)


def _noise_setting(err: _Errors, where: str, item: Any, base: C.Config) -> NoiseSetting:
    from knnmix.noise import parse_noise_spec

    overrides: dict[str, Any] = {}
    if isinstance(item, dict):
        err.unknown(item, NOISE_FIELDS, f"{where}.")
        spec = item.get("spec")
        overrides = dict(_flat_mapping(item.get("set") or {}, f"search space {err.label}: {where}.set"))
        where_spec = f"{where}.spec"
    else:
        spec, where_spec = item, where
    if not isinstance(spec, str):
        err(where_spec, f"expected a noise spec such as 'symmetric:0.4', got {_show(spec)}")
    try:
        parsed = parse_noise_spec(spec)
    except KnnmixError as exc:
        err(where_spec, str(exc))
    for key in overrides:
        _check_config_key(err, f"{where}.set.{key}", key)
        if key in ("noise.spec", "out"):
            err(f"{where}.set.{key}", "is set by the sweep")
    try:
        cfg = C.replace(base, **{"noise.spec": str(parsed), **overrides})
    except ConfigError as exc:
        err(where, str(exc))
    if parsed.kind in ("cifar10n", "cifar100n"):
        dataset = "cifar10" if parsed.kind == "cifar10n" else "cifar100"
        if cfg.data.name != dataset:
            err(where_spec, f"{str(parsed)!r} is the human noise of {dataset}, but data.name is {cfg.data.name!r}")
        if cfg.noise.cifar_n_dir is None:
            err(where_spec, f"{str(parsed)!r} needs noise.cifar_n_dir, the folder of the CIFAR-N label files "
                "(e.g. --set noise.cifar_n_dir=DIR)")
    return NoiseSetting(str(parsed), overrides)


def _is_int_type(tp: Any) -> bool:
    return tp is int or (typing.get_origin(tp) in (typing.Union, types.UnionType) and int in typing.get_args(tp))


def _is_float_type(tp: Any) -> bool:
    return tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp))


def _type_word(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if _is_int_type(tp):
        return "an integer"
    if _is_float_type(tp):
        return "a number"
    if tp is bool:
        return "true or false"
    return "a string"


def _param(err: _Errors, key: str, spec: Any, base: C.Config) -> Param:
    where = f"params.{key}"
    tp = _config_type(key)
    if tp is None:
        close = difflib.get_close_matches(key, config_keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        err(where, f"{key!r} is not a config key{hint}; `knnmix config --doc` lists them")
    if _fixed(key):
        err(where, f"{key} is set by the sweep and cannot be searched")
    if not isinstance(spec, dict):
        err(where, f"expected a distribution such as {{type: int, low: 1, high: 5}}, got {_show(spec)}")
    kind = spec.get("type")
    if kind not in DIST_FIELDS:
        err(f"{where}.type", f"{_show(kind)} is not one of {', '.join(DIST_FIELDS)}")
    err.unknown(spec, DIST_FIELDS[kind], f"{where}.")

    def check_value(sub: str, value: Any) -> None:
        try:
            C.replace(base, **{key: value})
        except ConfigError as exc:
            err(f"{where}.{sub}", str(exc))

    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            err(f"{where}.values", f"expected a non-empty list, got {_show(values)}")
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, (bool, int, float, str)):
                err(f"{where}.values[{i}]", f"{_show(v)}: choices must be numbers, strings, booleans or null")
            check_value(f"values[{i}]", v)
        if len({repr(v) for v in values}) != len(values):
            err(f"{where}.values", f"{values} lists a value twice")
        return Param(key, "choice", values=tuple(values))

    for sub in ("low", "high"):
        if sub not in spec or spec[sub] is None:
            err(f"{where}.{sub}", f"missing: {kind} needs low and high")
    if kind in ("uniform", "loguniform") and not _is_float_type(tp):
        err(f"{where}.type", f"{kind} draws real numbers but {key} is {_type_word(tp)}; use "
            + ("int or choice" if _is_int_type(tp) else "choice"))
    if kind == "int" and not (_is_int_type(tp) or _is_float_type(tp)):
        err(f"{where}.type", f"int draws integers but {key} is {_type_word(tp)}; use choice")
    nums: dict[str, Any] = {}
    for sub in ("low", "high", "step"):
        if sub not in spec or spec[sub] is None:
            continue
        raw = spec[sub]
        if kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                err(f"{where}.{sub}", f"expected an integer, got {_show(raw)}")
            nums[sub] = raw
        else:
            num = _as_number(raw)
            if num is None or not math.isfinite(num):
                err(f"{where}.{sub}", f"expected a number, got {_show(raw)}")
            nums[sub] = float(num)
    low, high, step = nums["low"], nums["high"], nums.get("step")
    if high < low:
        err(f"{where}.high", f"{high} is below low={low}")
    if kind == "loguniform" and low <= 0:
        err(f"{where}.low", f"{low} must be > 0 for a log scale")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        err(f"{where}.log", f"expected true or false, got {_show(log)}")
    if step is not None:
        if step <= 0:
            err(f"{where}.step", f"{step} must be > 0")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9:
            err(f"{where}.step", f"high - low = {high - low} is not a multiple of step={step}")
        if log and step != 1:
            err(f"{where}.log", "a log-scale int needs step 1")
    if kind == "int" and log and low < 1:
        err(f"{where}.low", f"{low} must be >= 1 for a log scale")
    check_value("low", low)
    check_value("high", high)
    return Param(key, kind, low=low, high=high, step=step, log=log)


def _start_point(err: _Errors, where: str, point: Any, params: dict[str, Param]) -> dict[str, Any]:
    if not isinstance(point, dict):
        err(where, f"expected a mapping of searched keys to values, got {_show(point)}")
    point = _flat_mapping(point, f"search space {err.label}: {where}")
    for key in point:
        if key not in params:
            err(f"{where}.{key}", f"is not a searched key (params: {', '.join(params)})")
    missing = [k for k in params if k not in point]
    if missing:
        err(where, f"gives no value for {', '.join(missing)}: a start point sets every searched key")
    out = {}
    for key, value in point.items():
        dist = params[key].distribution()
        if params[key].type in ("uniform", "loguniform"):
            num = _as_number(value)
            value = float(num) if num is not None else value
        try:
            ok = dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):
            ok = False
        if not ok:
            err(f"{where}.{key}", f"{_show(value)} is outside {params[key].describe()}")
        out[key] = value
    return out


def _apply_space_override(data: dict[str, Any], key: str, value: Any, label: str) -> None:
    """``sweep.trials=2``, ``sweep.asha.grace_period=1``, ``sweep.params.method.k.high=3``,
    ``sweep.params.method.k={type: choice, values: [3]}``, ``sweep.base.set.epochs=4``."""
    parts = key.split(".")
    head = parts[0]
    if head not in TOP_FIELDS:
        close = difflib.get_close_matches(head, TOP_FIELDS, n=1)
        hint = f" (did you mean {SPACE_PREFIX + close[0]!r}?)" if close else ""
        raise ConfigError(f"search space {label}: --set {SPACE_PREFIX}{key}: unknown field{hint}")
    if head == "params" and len(parts) > 1:
        params = data.setdefault("params", {})
        if not isinstance(params, dict):
            params = data["params"] = {}
        rest = parts[1:]
        if len(rest) > 1 and rest[-1] in {f for fs in DIST_FIELDS.values() for f in fs}:
            name = ".".join(rest[:-1])
            entry = params.setdefault(name, {})
            if not isinstance(entry, dict):
                entry = params[name] = {}
            entry[rest[-1]] = value
        else:
            params[".".join(rest)] = value
        return
    if head == "base" and len(parts) > 2 and parts[1] == "set":
        base = data.setdefault("base", {}) or {}
        data["base"] = base
        sets = base.get("set") or {}
        sets = dict(_flat_mapping(sets, f"search space {label}: base.set"))
        sets[".".join(parts[2:])] = value
        base["set"] = sets
        return
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
