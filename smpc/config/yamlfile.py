"""Reading the YAML files users write: one mapping, every problem one UserError line.

The loader is PyYAML's safe one (no code runs) with three refusals of its own: a key given
twice in a mapping (PyYAML keeps the last one silently), a file whose aliases would expand
to more than :data:`MAX_YAML_VALUES` values (an alias bomb, "billion laughs": counted on
the alias graph before anything is expanded), and values nested too deeply. A file that
is not UTF-8 is refused with the line of its first bad byte.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from smpc.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (give each key once)", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


MAX_YAML_VALUES = 100_000
"""How many values a configuration file may hold once its aliases are expanded: files
people write hold a few hundred; an alias bomb ("billion laughs") billions."""


def _expanded_size(root: yaml.Node, path: Path) -> int:
    """The number of values ``root`` holds with every alias expanded, counted on the node
    graph (an alias is the same node object again), so nothing is expanded to count it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            mark = node.start_mark
            raise UserError(
                f"{path}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: an "
                "alias refers to the value that contains it (a recursive structure)"
            )
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                break
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _decode(path: Path, data: bytes) -> str:
    """The file as UTF-8 text, or one line saying where it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping; every problem is a UserError.

    Duplicate keys are refused (not last-wins), and so is a file whose aliases expand to
    more than :data:`MAX_YAML_VALUES` values, before anything is expanded.
    """
    path = Path(path)
    try:
        text = _decode(path, path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a YAML file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    loader = _StrictLoader(text)  # a SafeLoader subclass: no code runs
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, path) > MAX_YAML_VALUES:
            raise UserError(
                f"{path}: its aliases expand to more than {MAX_YAML_VALUES} values (an alias "
                "bomb?): write the values out instead of repeating aliases"
            )
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise UserError(f"{path}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: values nested too deeply") from None
    except ValueError as exc:  # a value PyYAML's constructors cannot convert
        problem = (
            f"a number of more than {sys.get_int_max_str_digits()} digits"
            if "digits" in str(exc)  # int()'s limit on its input
            else str(exc)  # e.g. a date such as 2024-13-01
        )
        raise UserError(f"{path}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_yaml_type(data)}"
        raise UserError(f"{path}: the top level must be a mapping of keys to values, got {got}")
    return data


def _yaml_type(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
