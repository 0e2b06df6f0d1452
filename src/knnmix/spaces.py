"""Search spaces of sweeps: the YAML schema, its Optuna distributions, loading (no Ray, no data).

A search space file (``search_spaces/*.yaml``, documented in ``search_spaces/README.md``) is built by the config's
own builder (:func:`knnmix.config._build` over the dataclasses below: an unknown field or a wrong type is one
:class:`~knnmix.errors.ConfigError` naming it), its distributions by Optuna's own constructors, and every value a
distribution can draw is checked by building the config it would go into. Every mistake is one line naming the file
and the field, e.g. ``search space smoke.yaml: params.method.k.low: method.k: 0 is out of range; use >= 1``,
raised before Ray starts.

Selection is on the noisy-validation accuracy only: ``metric`` can only be ``val_acc`` (mode ``max``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import re
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from knnmix import config as C
from knnmix.errors import ConfigError, KnnmixWarning, did_you_mean

SETTING_KEY = "noise_setting"  # the key of a sweep trial's config that names its noise setting (slug)
METRIC = "val_acc"  # the only metric a sweep may select on (Tune, Optuna and ASHA all use it)
MODE = "max"
SPACE_PREFIX = "sweep."  # --set prefix of overrides that change the space file rather than the base run
#: Config keys a sweep sets itself (per trial or per noise setting): they cannot be searched.
FIXED_KEYS = ("out", "noise.spec", "epochs", "device", "threads", "checkpoint_every", "log_every")
FIXED_PREFIXES = ("distributed.",)
#: Config keys the sweep writes into every trial's config (a value in base.set would be silently replaced).
TRIAL_KEYS = ("out", "noise.spec", "threads", "distributed.name", "distributed.storage_path")
SET_BY_THE_SWEEP = ("set by the sweep for each trial (--out names the sweep's folder, a setting its noise.spec; a "
                    "trial's threads are distributed.cpus_per_worker)")


# ----------------------------------------------------------------------------------------------------------------
# The schema: what a space file may hold (built by knnmix.config's builder)


class _Schema:
    _noun: ClassVar[str] = "field"  # how the builder's errors name an unknown key


@dataclass
class Base(_Schema):
    config: str | None = None  # an embedded preset name or a config YAML file (relative to the space file)
    set: dict[str, Any] = field(default_factory=dict)  # config keys of the base run, dotted or nested


@dataclass
class NoiseSetting(_Schema):
    """One noise setting: its own Optuna study, ASHA scheduler and MLflow parent run. A space file lists it as a
    noise spec, or as a mapping of ``spec`` and ``set``."""

    spec: str  # a noise spec, e.g. symmetric:0.8 (canonical once validated)
    set: dict[str, Any] = field(default_factory=dict)  # config keys for this noise setting only

    @property
    def slug(self) -> str:
        """Folder-safe name: ``symmetric:0.2`` -> ``symmetric-0.2``."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec.replace(":", "-"))

    def to_dict(self) -> str | dict[str, Any]:
        return {"spec": self.spec, "set": dict(self.set)} if self.set else self.spec


@dataclass
class Asha(_Schema):
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # 1/reduction_factor of the trials pass each rung
    max_t: int | None = None  # the longest trial, in epochs; null = the base run's epochs
    brackets: int = 1


@dataclass
class Param(_Schema):
    type: Literal["int", "uniform", "loguniform", "choice"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    values: list[Any] | None = None

    def distribution(self) -> Any:
        """The Optuna distribution (its constructor validates the bounds)."""
        import optuna.distributions as d

        if self.type == "choice":
            return d.CategoricalDistribution(list(self.values or []))
        if self.type == "int":
            step = 1 if self.step is None else int(self.step)  # step 0 is Optuna's error, not step 1
            return d.IntDistribution(int(self.low), int(self.high), step=step, log=self.log)  # type: ignore[arg-type]
        return d.FloatDistribution(float(self.low), float(self.high), step=self.step,  # type: ignore[arg-type]
                                   log=self.type == "loguniform")

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice of {self.values}"
        extra = (f", step {self.step}" if self.step is not None else "") + (", log scale" if self.log else "")
        return f"{self.type} in [{self.low}, {self.high}]{extra}"

    def to_dict(self) -> dict[str, Any]:
        keep = ("values",) if self.type == "choice" else ("low", "high", "step", "log")
        # 'is not None', not 'not in (None, False)': low 0 or 0.0 equals False and was dropped from space.yaml
        return {"type": self.type, **{k: getattr(self, k) for k in keep
                                      if getattr(self, k) is not None and (k != "log" or self.log)}}


@dataclass
class SearchSpace(_Schema):
    """A search space file, validated; ``base.config`` resolved to an absolute file, ``base.set`` flat, ``noise``
    canonical."""

    name: str  # sweep name: default folder runs/sweeps/<name>, MLflow experiment knnmix-sweep-<name>
    trials: int  # per noise setting
    noise: list[str | NoiseSetting]
    params: dict[str, Param]
    description: str = ""
    experiment: str | None = None
    base: Base = field(default_factory=Base)
    seed: int = 0
    metric: str = METRIC
    mode: str = MODE
    max_concurrent_trials: int | None = None
    startup_trials: int | None = None
    asha: Asha = field(default_factory=Asha)
    start_with: list[dict[str, Any]] = field(default_factory=list)
    label: str = "space.yaml"  # how errors name the file (not part of the space: to_dict leaves it out)

    @property
    def settings(self) -> list[NoiseSetting]:
        return [n if isinstance(n, NoiseSetting) else NoiseSetting(n) for n in self.noise]

    def base_config(self) -> C.Config:
        """The validated base config (before the noise setting and the sampled values)."""
        path = self.base.config
        data = {} if path is None else C.read_yaml(Path(path), f"config file {path!r}")
        for key, value in self.base.set.items():
            C.set_dotted(data, key, value)
        return C.from_dict(data)

    def setting_config(self, setting: NoiseSetting) -> C.Config:
        return C.replace(self.base_config(), **{"noise.spec": setting.spec, **setting.set})

    @property
    def epochs(self) -> int:
        return max(self.setting_config(s).epochs for s in self.settings)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"knnmix-sweep-{self.name}"

    def distributions(self) -> dict[str, Any]:
        return {k: p.distribution() for k, p in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain data; :func:`parse_space` of it gives an equal space."""
        out = dataclasses.asdict(self)
        del out["label"]
        out.update(noise=[s.to_dict() for s in self.settings], params={k: p.to_dict() for k, p in self.params.items()})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def shipped_spaces() -> Path:
    """The folder of the shipped spaces: the repository's ``search_spaces/``, installed as ``knnmix.search_spaces``."""
    try:
        return Path(str(resources.files("knnmix.search_spaces")))
    except ModuleNotFoundError:  # a source tree that was not installed
        return Path(__file__).resolve().parents[2] / "search_spaces"  # (src/knnmix/spaces.py)


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A space file path, or the name of a shipped space (``smoke``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1 and (shipped_spaces() / f"{p.name}.yaml").is_file():
        return shipped_spaces() / f"{p.name}.yaml"
    names = ", ".join(sorted(x.stem for x in shipped_spaces().glob("*.yaml")))
    problem = "is a folder, not a YAML file" if p.is_dir() else "does not exist"
    raise ConfigError(f"search space {str(name_or_path)!r} {problem} (shipped spaces: {names})")


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Read, override (``--set``: ``sweep.FIELD=...`` changes the space, other keys its base run) and validate."""
    p = resolve_space_path(path)
    data = C.read_yaml(p, f"search space {p.name}: the file")
    data.setdefault("name", p.stem)
    for item in overrides or []:
        key, value = C.parse_override(item)
        if not key.startswith(SPACE_PREFIX):  # an unknown key or a wrong type is the flag's, not the file's `base:`
            if key in TRIAL_KEYS:
                noise = f"; --set 'sweep.noise=[{value}]' chooses the noise settings" if key == "noise.spec" else ""
                raise ConfigError(f"--set {item}: {SET_BY_THE_SWEEP}{noise}")
            C.set_dotted(alone := {}, key, value)
            C.as_config_error(f"--set {item}", lambda: C._build(C.Config, alone, ""))  # noqa: B023 (called at once)
        _set_space_field(data, key[len(SPACE_PREFIX):] if key.startswith(SPACE_PREFIX) else f"base.set.{key}", value)
    return parse_space(data, label=p.name, root=p.parent)


def parse_space(data: dict[str, Any], *, label: str, root: Path | None = None, started: bool = False) -> SearchSpace:
    """Validate a space given as plain data (``root``: the folder relative ``base.config`` paths start from).
    ``started``: a sweep folder's own space.yaml, which runs as it started: the advice given when it started (a
    searched key no trial reads, a phase no trial reaches) is not given again, nor a sweep of an older knnmix
    refused."""
    try:
        space = C._build(SearchSpace, data, "")
        _validate(space, root, started)
    except ConfigError as exc:
        raise ConfigError(f"search space {label}: {exc}") from None
    space.label = label
    notes: dict[str, list[str]] = {}
    for spec, note in [] if started else never_reached(space):
        notes.setdefault(note, []).append(spec)
    for note, specs in notes.items():
        warnings.warn(f"search space {label}: no trial at {', '.join(specs)} reaches every phase: {note}",
                      KnnmixWarning, stacklevel=2)
    from knnmix.noise import parse_noise_spec

    # (a run warns from the labels it draws; a sweep repeats its trials' warnings only once they have run)
    flips = [s.spec for s in space.settings if (n := parse_noise_spec(s.spec)).kind in ("pairflip", "asymmetric")
             and (n.rate or 0) > 0.5]
    if flips and not started:
        warnings.warn(f"search space {label}: at {', '.join(flips)} most of each flipped class carries the label it "
                      "flips to, in the noisy validation split too: the trials are selected for learning the flip",
                      KnnmixWarning, stacklevel=2)
    return space


#: Searched keys that move the epochs where a method's phases start (:meth:`knnmix.methods.Method.schedule_note`).
SCHEDULE_KEYS = ("method.warmup_epochs", "method.correction_start", "method.premix")


def never_reached(space: SearchSpace) -> list[tuple[str, str]]:
    """``(noise spec, note)`` for each setting and searched method whose every trial, at any value of the searched
    schedule keys, ends before a phase of its method (e.g. epochs=2 before knnmix's mixing starts, or an asha.max_t
    before it): that method's knobs would change nothing. Built-in methods only (a plug-in's trials say it)."""
    from knnmix.methods import METHODS

    corners = {key: list(p.values or []) if p.type == "choice" else [p.low, p.high]
               for key, p in space.params.items() if key in SCHEDULE_KEYS}
    methods = space.params["method.name"].values or [] if "method.name" in space.params else [None]
    found = []
    for setting, method in itertools.product(space.settings, methods):
        cfg, notes = space.setting_config(setting), []
        cfg = cfg if method is None else C.replace(cfg, **{"method.name": method})
        factory = METHODS.get(cfg.method.name)
        if getattr(factory, "__module__", None) != "knnmix.methods.builtin":
            continue
        for values in itertools.product(*corners.values()):
            c = C.replace(cfg, **dict(zip(corners, values)))
            notes.append(factory(c.method, 2).schedule_note(min(c.epochs, space.asha.max_t or c.epochs)))
            if notes[-1] is None:
                break
        else:
            found.append((setting.spec, notes[0]))
    return found


def _validate(space: SearchSpace, root: Path | None, started: bool = False) -> None:
    def check(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {message}")

    check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", space.name)), "name",
          f"{space.name!r} must be a word of letters, digits, '.', '_' or '-'")
    check(space.metric == METRIC, "metric", f"{space.metric!r} cannot be selected on: sweeps select on the "
          f"noisy-validation accuracy {METRIC!r} only (the test split is reported, never used to select)")
    check(space.mode == MODE, "mode", f"{space.mode!r}: {METRIC} is maximised; use {MODE!r}")
    for key, low in (("trials", 1), ("seed", 0), ("max_concurrent_trials", 1), ("startup_trials", 0),
                     ("asha.grace_period", 1), ("asha.brackets", 1)):
        value = operator.attrgetter(key)(space)
        check(value is None or value >= low, key, f"{value} is out of range; use >= {low}")

    # the base run and the noise settings
    space.base.config = _base_path(space.base.config, root)
    space.base.set = flat_keys(space.base.set, "base.set")
    fixed = sorted(set(space.base.set) & set(TRIAL_KEYS))
    check(not fixed, "base.set", f"{', '.join(fixed)}: {SET_BY_THE_SWEEP}")
    base = C.as_config_error("base", space.base_config)

    def validated(cfg: C.Config, where: str) -> None:  # every trial reports val_acc (else Tune's traceback)
        check(cfg.data.val_fraction > 0 or cfg.data.name in C.SHIPPED_VALIDATION, where,
              f"sweeps select on the noisy-validation accuracy ({METRIC}): use a validation fraction > 0 "
              f"({cfg.data.name} ships no validation split)")

    validated(base, "base.set.data.val_fraction")
    from knnmix.noise import parse_noise_spec

    check(len(space.noise) > 0, "noise", "expected a non-empty list of noise specs")
    space.noise[:] = space.settings  # each a NoiseSetting, made canonical below
    seen: dict[str, int] = {}
    for i, setting in enumerate(space.settings):
        where = f"noise[{i}]"
        canonical = setting.spec = C.as_config_error(where, lambda: str(parse_noise_spec(setting.spec)))
        setting.set = flat_keys(setting.set, f"{where}.set")
        check(not {"noise.spec", "out", "threads"} & set(setting.set), f"{where}.set",
              "noise.spec, out and threads are set by the sweep")
        searched = sorted(set(space.params) & set(setting.set))
        check(not searched, f"{where}.set", f"{', '.join(searched)}: searched, so a noise setting cannot fix it; "
              "remove it from the setting's set (or from params)")
        check(not any(k.startswith(FIXED_PREFIXES) for k in setting.set), f"{where}.set", "distributed.* keys are "
              "the sweep's (every trial gets the same resources): set them in base.set")
        check(setting.slug not in seen, where, f"{canonical!r} is listed twice (also noise[{seen.get(setting.slug)}])")
        seen[setting.slug] = i
        cfg = C.as_config_error(where, lambda s=setting: space.setting_config(s))
        validated(cfg, f"{where}.set.data.val_fraction")

    # the distributions: Optuna's constructors check the bounds; the config checks every value they can draw
    check(len(space.params) > 0, "params", "expected a mapping of config keys to distributions")
    types = {key: tp for key, tp, _, _ in C.field_docs()}  # config key -> its documented type, e.g. "int or null"
    for key, param in space.params.items():
        where = f"params.{key}"
        check(key in types, where,
              f"{key!r} is not a config key{did_you_mean(key, types)}; `knnmix config --doc` lists them")
        check(key not in FIXED_KEYS and not key.startswith(FIXED_PREFIXES), where, f"{key} is set by the sweep, not "
              "searched (the same for every trial: base.set or --set)")
        if param.type == "choice":
            check(bool(param.values), f"{where}.values", "expected a non-empty list")
            seen = [(v, type(v)) for v in param.values or []]  # a repeated value would weigh twice in the sampler
            twice = [v for i, (v, tp) in enumerate(seen) if (v, tp) in seen[:i]]
            check(not twice, f"{where}.values", f"lists {twice[0]!r} twice" if twice else "")
            given = [f for f in ("low", "high", "step") if getattr(param, f) is not None] + ["log"] * param.log
            check(not given, f"{where}.{given[0] if given else ''}", "only for types int, uniform and loguniform, "
                  "not choice")
        else:
            check(param.low is not None and param.high is not None, where, f"{param.type} needs low and high")
            check(param.values is None, f"{where}.values", f"only for type choice, not {param.type}")
        check(not param.log or param.type in ("int", "choice"), f"{where}.log",
              f"only for type int; for a real number on a log scale use type loguniform, not {param.type} with log")
        if param.type == "int":
            for sub in ("low", "high", "step"):
                v = getattr(param, sub)
                check(v is None or isinstance(v, int), f"{where}.{sub}", f"expected an integer, got {v!r} (float)")
        dist = C.as_config_error(where, param.distribution, (ValueError, TypeError))  # Optuna's own checks
        tp = types[key].removesuffix(" or null")
        is_int, is_float = tp == "int", tp == "float"
        if param.type in ("uniform", "loguniform"):
            check(is_float, f"{where}.type", f"{param.type} draws real numbers but {key} is "
                  + ("an integer; use int or choice" if is_int else "not a number; use choice"))
        if param.type == "int":
            check(is_int or is_float, f"{where}.type", f"int draws integers but {key} is not a number; use choice")
        corners = ([(v, f"values[{i}]") for i, v in enumerate(dist.choices)] if param.type == "choice"
                   else [(dist.low, "low"), (dist.high, "high")])
        for value, sub in corners:
            at = f"{where}.{sub}"
            validated(C.as_config_error(at, lambda v=value: C.replace(base, **{key: v})), at)

    # a searched key that no trial reads (method.k of a mixup sweep) would spend the budget on values nothing uses
    # (each setting's config under every value of the searched keys that decide what is read, e.g. method.name)
    if not started:  # (a sweep folder's own space runs as it started)
        configs = [space.setting_config(setting) for setting in space.settings]
        for decider in sorted(set(C.DECIDING_KEYS) & {k for k, p in space.params.items() if p.type == "choice"}):
            configs = [C.replace(cfg, **{decider: v}) for cfg in configs for v in space.params[decider].values or []]
        for key in space.params:
            unread = [C.unread_keys(cfg).get(key) for cfg in configs]
            if all(unread):  # (the message joins every reason: built only then)
                raise ConfigError(f"params.{key}: no trial would use it: {'; '.join(dict.fromkeys(unread))}; remove "
                                  f"it from params (--set sweep.params.{key}=null)")

    # ASHA and the start points
    a = space.asha
    check(a.reduction_factor > 1, "asha.reduction_factor", f"{a.reduction_factor:g} must be > 1")
    check(a.max_t is None or 1 <= a.max_t <= space.epochs, "asha.max_t",
          f"{a.max_t} is outside [1, the base run's epochs={space.epochs}]")
    check(a.grace_period <= (a.max_t or space.epochs), "asha.grace_period",
          f"{a.grace_period} is more than the longest trial ({a.max_t or space.epochs} epochs)")
    dists = space.distributions()
    for i, point in enumerate(space.start_with):
        point = space.start_with[i] = flat_keys(point, f"start_with[{i}]")
        extra = sorted(set(point) - set(dists))
        check(not extra, f"start_with[{i}].{extra[0] if extra else ''}", f"is not a searched key ({', '.join(dists)})")
        missing = [k for k in dists if k not in point]
        check(not missing, f"start_with[{i}]", f"gives no value for {', '.join(missing)}: a start point sets every "
              "searched key")
        for key, value in point.items():
            where = space.params[key].describe()
            if space.params[key].type == "int" and isinstance(value, float):  # 2.0: YAML's float, not an int
                need = (f"{value!r} is not an integer: write {int(value) if value.is_integer() else 'an integer'} "
                        f"({key} is {where})")
            else:
                need = (f"{value!r} is outside {where}; give a value inside it, or no start points (--set "
                        "'sweep.start_with=[]')")
            check(_inside(dists[key], value), f"start_with[{i}].{key}", need)


def _inside(dist: Any, value: Any) -> bool:
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not dist.low <= value <= dist.high:
        return False
    if isinstance(dist, d.IntDistribution) and not isinstance(value, int):  # 2.0 failed its trial: not an integer
        return False
    step = dist.step
    return step is None or math.isclose((value - dist.low) / step, round((value - dist.low) / step), abs_tol=1e-9)


def _base_path(value: str | None, root: Path | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        p = root / p if not p.is_absolute() and root is not None else p
        if not p.is_file():
            raise ConfigError(f"base.config: config file {str(p)!r} does not exist")
        return str(p.resolve())
    return C.as_config_error("base.config", lambda: str(C.preset_path(value).resolve()))


def flat_keys(data: Any, where: str = "set") -> dict[str, Any]:
    """``{"method": {"k": 3}, "optim.lr": 0.1}`` -> ``{"method.k": 3, "optim.lr": 0.1}`` (a section's mapping is
    flattened; a leaf's value is kept as it is)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {data!r}")
    sections = {name for name, tp in typing.get_type_hints(C.Config).items() if dataclasses.is_dataclass(tp)}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        nested = isinstance(value, dict) and str(key) in sections
        for k, v in ({f"{key}.{k}": v for k, v in flat_keys(value, f"{where}.{key}").items()} if nested
                     else {str(key): value}).items():
            if k in flat:
                raise ConfigError(f"{where}: {k} is given twice (as a section's key and as a dotted key)")
            flat[k] = v
    return flat


def _set_space_field(data: dict[str, Any], key: str, value: Any) -> None:
    """``trials=2``, ``asha.grace_period=1``, ``params.method.k.high=3``, ``params.method.k={type: ...}``,
    ``base.set.epochs=4``."""
    parts = key.split(".")
    if parts[0] == "params" and len(parts) > 1:
        params = data["params"] = data.get("params") or {}
        head, leaf, fields = ".".join(parts[1:-1]), parts[-1], [f.name for f in dataclasses.fields(Param)]
        if len(parts) > 2 and leaf in fields:  # one field of a searched key
            if not isinstance(params.get(head), dict):
                raise ConfigError(f"--set sweep.{key}: {head!r} is not searched in this space (it searches "
                                  f"{', '.join(params) or 'nothing'}){did_you_mean(head, params)}; to search it, give "
                                  f"it whole, e.g. --set 'sweep.params.{head}={{type: int, low: 1, high: 3}}'")
            params[head][leaf] = value
        elif len(parts) > 2 and isinstance(params.get(head), dict) and not isinstance(value, dict):
            raise ConfigError(f"--set sweep.{key}: {leaf!r} is no field of a searched key ({', '.join(fields)})"
                              f"{did_you_mean(leaf, fields)}")
        elif value is None:  # params.KEY=null: KEY is not searched (nor set by the start points)
            name = ".".join(parts[1:])
            if params.pop(name, None) is None:
                raise ConfigError(f"--set sweep.{key}=null: {name!r} is not searched in this space (it searches "
                                  f"{', '.join(params) or 'nothing'}){did_you_mean(name, params)}")
            for point in data.get("start_with") or []:
                if isinstance(point, dict):
                    point.pop(name, None)
                    section = point.get(parts[1])
                    if len(parts) == 3 and isinstance(section, dict):
                        section.pop(parts[2], None)
        else:  # a whole param
            params[".".join(parts[1:])] = value
        return
    if parts[:2] == ["base", "set"] and len(parts) > 2:
        base = data["base"] = data.get("base") or {}
        if isinstance(base, dict):  # otherwise the builder names the mistake
            base["set"] = {**flat_keys(base.get("set") or {}), ".".join(parts[2:]): value}
        return
    C.set_dotted(data, key, value)
