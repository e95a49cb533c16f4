"""Every default of a training run, declared once: in the typed schemas.

The dataclass schemas (:class:`cispo.config.TrainConfig` and the sections it holds) carry each key's
type, default and meaning. From them this module writes ``configs/base.yaml`` (the first entry of the
Hydra defaults list, so that every key exists and can be overridden on the command line) and
``docs/config-reference.md`` (the table users read). Config groups and presets then list only what
they change. ``tests/unit/config/test_config_consistency.py`` fails when either file is stale, when a preset
repeats a value it would get anyway, or when a key can never take effect.

    python -m cispo.config_reference          # rewrite both files
    python -m cispo.config_reference --check  # exit 1 if either is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from cispo.config import DERIVED_KEYS, TrainConfig
from cispo.config.schema import to_dict

ROOT = Path(__file__).resolve().parents[2]
BASE_YAML = ROOT / "configs" / "base.yaml"
REFERENCE_MD = ROOT / "docs" / "config-reference.md"
WIDTH = 100


def field_docs(cls: type) -> dict[str, str]:
    """The text that explains each field: the string literal right after it, else the comment lines
    right above it, else its inline comment."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    body = ast.parse(source).body[0].body
    docs: dict[str, str] = {}
    for index, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        following = body[index + 1] if index + 1 < len(body) else None
        if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[name] = " ".join(following.value.value.split())
            continue
        above: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip().lstrip("#").strip())
            row -= 1
        if above:
            docs[name] = " ".join(above)
            continue
        line = lines[node.lineno - 1]
        if "#" in line:
            docs[name] = line.split("#", 1)[1].strip()
    return docs


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list[{', '.join(type_name(a) for a in get_args(tp))}]"
    if origin is dict:
        return f"dict[{', '.join(type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def sections(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted prefix, dataclass) for the run config and every nested section, depth first."""
    out = [(prefix, cls)]
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += sections(hints[f.name], f"{prefix}{f.name}.")
    return out


GROUP_CHOSEN = frozenset({"data.train", "data.eval", "model.path"})
"""Values that a config group always supplies: Hydra would merge a default ``data.eval`` mapping into
every data group's own sets, and a group's required ``???`` does not replace an existing value. Their
defaults stay in the schema (for code that builds the dataclasses directly) and out of base.yaml."""


def defaults_tree() -> dict[str, Any]:
    """Plain-data defaults of a run, without the keys that are derived from others or chosen whole by a
    config group."""
    tree = to_dict(TrainConfig())

    def prune(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted in DERIVED_KEYS or dotted in GROUP_CHOSEN:
                continue
            out[key] = prune(value, dotted + ".") if isinstance(value, dict) and _is_section(dotted) else value
        return out

    return prune(tree, "")


def _is_section(dotted: str) -> bool:
    return any(prefix == dotted + "." for prefix, _ in sections())


def _scalar(value: Any) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()[1:-1]


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - len(indent) - 2, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def render_base_yaml() -> str:
    docs = {prefix: field_docs(cls) for prefix, cls in sections()}
    lines = [
        "# @package _global_",
        "# GENERATED by `python -m cispo.config_reference` from the typed schemas: do not edit. Every key of",
        "# a training run with its default; config groups and experiment presets override what they change.",
        "# The meaning of each key, with the paper behind it: docs/config-reference.md.",
    ]

    def emit(node: dict[str, Any], prefix: str, indent: str) -> None:
        for key, value in node.items():
            doc = docs.get(prefix, {}).get(key)
            if doc:
                lines.extend(_comment(doc, indent))
            if isinstance(value, dict) and _is_section(f"{prefix}{key}"):
                lines.append(f"{indent}{key}:")
                emit(value, f"{prefix}{key}.", indent + "  ")
            elif isinstance(value, (dict, list)) and value and any(isinstance(v, (dict, list)) for v in
                                                                    (value.values() if isinstance(value, dict) else value)):
                dumped = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=WIDTH)
                lines.extend(f"{indent}{line}" for line in dumped.rstrip().splitlines())
            else:
                lines.append(f"{indent}{key}: {_scalar(value)}")

    emit(defaults_tree(), "", "")
    return "\n".join(lines) + "\n"


def render_reference_md() -> str:
    out = [
        "# Configuration reference",
        "",
        "GENERATED by `python -m cispo.config_reference` from the typed schemas (`cispo/config/` and the",
        "sections it holds); do not edit by hand. Every key below can be set on the command line",
        "(`python -m cispo.train trainer.lr=2e-5`) or in a preset. `configs/base.yaml` holds these defaults;",
        "the groups (`algorithm=dapo`, `trainer=gpu`, ...) and `experiment=` presets change some of them.",
        "Keys marked *derived* are computed from others and cannot be set.",
        "",
    ]
    from cispo.config.data import DatasetSpec

    # The data sets of data.train (a list) and data.eval (a mapping) share one schema.
    for prefix, cls in sections() + sections(DatasetSpec, "<set>."):
        hints = get_type_hints(cls)
        docs = field_docs(cls)
        title = prefix.rstrip(".") or "(top level)"
        out += [f"## `{title}`", ""]
        if prefix == "<set>.":
            out += ["`<set>` is one data set: an entry of the list `data.train`, or `data.eval.<name>`.", ""]
        class_doc = " ".join((cls.__doc__ or "").split())
        if class_doc and not class_doc.startswith(cls.__name__ + "("):
            out += [class_doc, ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        defaults = {f.name: to_dict(f.default if f.default is not dataclasses.MISSING else f.default_factory())
                    for f in dataclasses.fields(cls)}  # not cls(): a data set's defaults alone are not a valid one
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            dotted = f"{prefix}{f.name}"
            default = "*derived*" if dotted in DERIVED_KEYS else f"`{_scalar(defaults[f.name])}`"
            if dotted in GROUP_CHOSEN:
                default = f"the `{dotted.split('.')[0]}` group"
            if len(default) > 60:
                default = "see `configs/base.yaml`"
            meaning = docs.get(f.name, "").replace("|", "\\|")
            out.append(f"| `{dotted}` | {type_name(hints[f.name])} | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in ((BASE_YAML, render_base_yaml()), (REFERENCE_MD, render_reference_md())):
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print("stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale) + "; run `python -m cispo.config_reference`")
        return 1
    for path in stale:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
