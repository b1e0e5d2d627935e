"""The config system's machinery: strict pydantic models, component configs selected by a
`kind`, dotted overrides, one loader and one error type.

Every config of seqmem (a run, a continual-learning run, a bench, a sweep's base) is a
pydantic v2 model with `extra="forbid"`, loaded by `load_config(source, overrides,
schema=...)`. After validation a config is typed all the way down: a mixer or a task is a
`ComponentConfig` (its `kind` plus its constructor's keyword options as typed fields), never
a dict. Invalid input raises `ConfigError`, whose `path` is the dotted key.
"""

from __future__ import annotations

import copy
import inspect
import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from seqmem.errors import ConfigError, SeqmemError
from seqmem.registry import hyperparameters
from seqmem.store import config_hash


class Strict(BaseModel):
    """A config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def config_hash(self) -> str:
        """The 12-hex-digit hash of the resolved config (the store's run identity)."""
        return config_hash(self.model_dump(mode="json"))


class ComponentConfig(Strict):
    """The config of one registered component (a mixer, a task, a continual method...): its
    `kind` and its constructor's keyword options, as typed fields. Concrete classes are made
    from the constructor by `component_config_class` so that the two cannot drift apart."""

    kind: str
    family: ClassVar[str] = "component"

    # (factory, args): factory(*args) is this class, so that an instance pickles by value
    # (generated classes cannot be found by name in a spawned process).
    rebuild_with: ClassVar[tuple[typing.Callable, tuple] | None] = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments for the component's constructor (every field but `kind`)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != "kind"}

    def __reduce__(self):
        if type(self).rebuild_with is None:
            return super().__reduce__()
        factory, args = type(self).rebuild_with
        return (_revalidate, (factory, args, {**self.options(), "kind": self.kind}))


def _revalidate(factory: typing.Callable, args: tuple, data: dict) -> ComponentConfig:
    return factory(*args).model_validate(data)


def component_config_class(builder: type | typing.Callable, kind: str, family: str,
                           base: type[ComponentConfig] = ComponentConfig, *,
                           rebuild_with: tuple[typing.Callable, tuple] | None = None
                           ) -> type[ComponentConfig]:
    """A ComponentConfig subclass mirroring the keyword-only hyperparameters of `builder` (a
    class or a function), with `kind` fixed to `kind`. `rebuild_with=(factory, args)`, where
    the module-level `factory(*args)` returns this class, lets its instances be pickled (to
    a worker process) and rebuilt there."""
    hints = typing.get_type_hints(builder.__init__ if isinstance(builder, type) else builder)
    fields: dict[str, Any] = {"kind": (Literal[kind], kind)}
    for name, p in hyperparameters(builder).items():
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (hints.get(name, Any), default)
    model = create_model(f"{getattr(builder, '__name__', kind)}Config", __base__=base, **fields)
    model.family = family
    model.rebuild_with = rebuild_with
    return model


def validate_component(value: Any, *, family: str, names: list[str], config_class,
                       default: str) -> ComponentConfig:
    """A component config from a name, a mapping ({kind: ..., **options}; without `kind` the
    default kind) or an instance. Raises ConfigError with the path inside the component."""
    if isinstance(value, ComponentConfig):
        value = value.model_dump()
    if isinstance(value, str):
        value = {"kind": value}
    if isinstance(value, dict) and "kind" not in value:
        value = {"kind": default, **value}
    if not isinstance(value, dict):
        raise ConfigError(f"must be a mapping with a 'kind' key (one of {', '.join(names)}), "
                          f"got {value!r}")
    kind = value["kind"]
    if kind not in names:
        raise ConfigError(f"unknown {family} {kind!r}; accepted: {', '.join(names)}", "kind")
    try:
        return config_class(kind).model_validate(value)
    except ValidationError as e:
        raise to_config_error(e, config_class(kind)) from None


# ---- error messages ---------------------------------------------------------------------------
def _problem(err: dict) -> tuple[str, str]:
    """(extra path, message) of one pydantic error entry."""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause.path, cause.problem
    if isinstance(cause, SeqmemError):
        return "", str(cause)
    msg = err["msg"]
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    return "", msg


def _accepted_keys(schema: type[BaseModel] | None, loc: list[str]) -> list[str]:
    """The keys a model accepts at the parent of `loc` (empty when unknown)."""
    model: Any = schema
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        model = fields[part].annotation
    return [k for k in getattr(model, "model_fields", {}) if k != "kind"] or \
        list(getattr(model, "model_fields", {}))


_TYPE_TAG = re.compile(r"^(int|float|str|bool|none|function-.*|(list|tuple|dict|set|literal)"
                       r"\[.*\])$")


def to_config_error(e: ValidationError, schema: type[BaseModel] | None = None) -> ConfigError:
    """One ConfigError for a pydantic ValidationError: the first problem's dotted path and
    message (the alternatives of a union joined by "or"), with the accepted keys for an
    unknown key; further problems follow after "; "."""
    by_path: dict[str, list[str]] = {}
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not _TYPE_TAG.match(str(p))]
        extra, msg = _problem(err)
        if extra:
            loc.extend(extra.split("."))
        path = ".".join(loc)
        if err.get("type") == "extra_forbidden":
            accepted = _accepted_keys(schema, loc)
            if accepted:
                msg += "; accepted: " + ", ".join(accepted)
        if msg not in by_path.setdefault(path, []):
            by_path[path].append(msg)
    if not by_path:
        return ConfigError(str(e))
    (first_path, first), *rest = by_path.items()
    problem = "; ".join([" or ".join(first),
                         *(f"{p}: {' or '.join(m)}" if p else " or ".join(m) for p, m in rest)])
    return ConfigError(problem, first_path)


# ---- loading and overrides --------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A dotted override's value, read as YAML (numbers, booleans, lists, null, strings)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


COMPONENT_KEYS = ("mixer", "task")  # keys whose string value is shorthand for {kind: value}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (returns a new dict). Setting a
    component's `kind` (`task.kind=mqar`) drops the previous kind's options."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if isinstance(nxt, str) and p in COMPONENT_KEYS:
                nxt = {"kind": nxt}
            if not isinstance(nxt, dict):
                nxt = {}
            node[p] = nxt
            node = nxt
        if parts[-1] == "kind" and parts[-2:-1] and parts[-2] in COMPONENT_KEYS:
            node.clear()
        node[parts[-1]] = parse_value(value)
    return data


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """The mapping in a YAML file, or a one-line ConfigError (missing, a folder, invalid YAML
    with its line and column, not a mapping)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e}") from None
    if data is None:  # an empty file would silently run the defaults
        raise ConfigError(f"{what} {str(path)!r} is empty; give at least one key (e.g. "
                          f"'seed: 0'), or no file for the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping at top level")
    return data


def load(schema: type[Strict], source: str | Path | dict | BaseModel | None = None,
         overrides: list[str] | None = None):
    """The one loader: a config of `schema` from a YAML file, a dict, a config or the
    defaults, then dotted overrides. Bad input raises ConfigError.

    A schema may define `resolve(self) -> Self` (e.g. RunConfig turns `auto` choices into
    the ones that will run); the loader returns the resolved config, which is what a run
    stores."""
    if source is None:
        data: dict = {}
    elif isinstance(source, BaseModel):
        data = source.model_dump(mode="json")
    elif isinstance(source, dict):
        data = source
    else:
        data = read_yaml(source)
    data = apply_overrides(data, overrides or [])
    try:
        cfg = schema.model_validate(data)
    except ValidationError as e:
        raise to_config_error(e, schema) from None
    except ConfigError:
        raise
    except SeqmemError as e:
        raise ConfigError(str(e)) from None
    resolve = getattr(cfg, "resolve", None)
    return resolve() if callable(resolve) else cfg
