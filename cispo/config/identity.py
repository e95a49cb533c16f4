"""Which config keys say what a run *is* (its identity), read from the schemas' declarations.

Each schema declares its own identity keys once (`Schema.IDENTITY_KEYS`, `Schema.RESTORED_ON_RESUME`);
this module walks the schema tree to answer for any dotted key. A resumed run may not change an
identity key (`cispo.driver.resume_guard`) unless ``checkpoint.allow_changes`` names it, and never one
the checkpoint restores anyway. Everything below a declared key belongs to it (``data.train`` covers
``data.train[0].path``; ``data.eval`` covers ``data.eval.aime.limit``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

IDENTITY_ATTR = "IDENTITY_KEYS"
RESTORED_ATTR = "RESTORED_ON_RESUME"


def _declared(cls: type, attr: str) -> frozenset[str]:
    return getattr(cls, attr, frozenset())


def _covers(declared: frozenset[str], key: str) -> bool:
    """True when `key` is a declared key or lies below one."""
    return any(key == d or key.startswith(d + ".") for d in declared)


def _section(cls: type, name: str) -> type | None:
    """The schema class of field `name` of `cls`, or None when it is not a section."""
    if not dataclasses.is_dataclass(cls) or name not in {f.name for f in dataclasses.fields(cls)}:
        return None
    hint: Any = get_type_hints(cls)[name]
    return hint if dataclasses.is_dataclass(hint) else None


def _declared_for(root: type, dotted: str, attr: str) -> bool:
    """Walks `dotted` down from `root`, asking each section on the way whether it declares the rest."""
    cls: type | None = root
    rest = dotted
    while cls is not None:
        if _covers(_declared(cls, attr), rest):
            return True
        head, _, rest = rest.partition(".")
        if not rest:
            return False
        cls = _section(cls, head)
    return False


def is_identity_key(dotted: str, root: type) -> bool:
    """Whether a change of `dotted` (below the root schema `root`, e.g. TrainConfig) changes what the run is."""
    return _declared_for(root, dotted, IDENTITY_ATTR)


def is_restored_on_resume(dotted: str, root: type) -> bool:
    """Whether the checkpoint restores `dotted` on resume (so a new value could never take effect)."""
    return _declared_for(root, dotted, RESTORED_ATTR)


def declared_keys(root: type, attr: str = IDENTITY_ATTR, prefix: str = "") -> list[str]:
    """Every key declared under `attr` in the tree below `root`, dotted from the root, sorted."""
    keys = [prefix + key for key in _declared(root, attr)]
    for f in dataclasses.fields(root):
        child = _section(root, f.name)
        if child is not None:
            keys += declared_keys(child, attr, f"{prefix}{f.name}.")
    return sorted(keys)
