"""Strict conversion of a (Hydra) mapping into typed dataclasses.

Hydra composes YAML; this module turns the result into our dataclass schemas and rejects anything
unexpected at start-up, with an error that names the key, the value and what is allowed. We do not
use OmegaConf structured configs because several schemas use ``Literal`` choices it cannot express.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that does not fit the schema; the message names the key."""


class Schema:
    """The one validation style of every schema (the rollout and reward sections follow it too):
    `validate()` checks the object's own values and raises ValueError naming ``section.key``, and
    construction runs it, so no invalid schema object exists. Rules that span sections are checked
    by `cispo.config.root.load_config`.

    What a run *is* is declared here too, once per schema: `IDENTITY_KEYS` names the fields (or dotted
    keys below them) that a resumed run may not change (the rollout and reward schemas declare theirs
    by the same name) (`cispo.config.identity`; listed in docs/checkpoints.md), and
    `RESTORED_ON_RESUME` those identity keys a checkpoint restores whatever the config says (the
    optimizer's and LR scheduler's state), which even ``checkpoint.allow_changes`` cannot change."""

    IDENTITY_KEYS: ClassVar[frozenset[str]] = frozenset()
    RESTORED_ON_RESUME: ClassVar[frozenset[str]] = frozenset()

    def validate(self) -> None:
        """Raise ValueError naming the key when a value is out of its range; nothing to check by default."""

    def __post_init__(self) -> None:
        self.validate()


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}={value!r}: expected {_describe(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}={value!r}: expected {_describe(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key)
    if origin in (list, tuple, typing.Sequence):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: expected a list")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}={value!r}: expected {_describe(tp)}")
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Builds ``cls`` from ``data``: unknown keys and wrongly typed values raise ConfigError naming
    ``prefix.key``; missing keys take the dataclass default."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}={data!r}: expected a mapping ({cls.__name__})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                          f"allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required key(s): {', '.join(f'{prefix}.{m}' if prefix else m for m in missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def to_dict(obj: Any) -> Any:
    """Plain-data view of a schema object (for saving the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
