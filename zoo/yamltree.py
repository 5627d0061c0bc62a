"""YAML with line numbers: the manifest's parse tree, so every error can name the line at fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from sleb.errors import SlebError


class ManifestError(SlebError):
    """The manifest is wrong; the message names the file and line (or the `--set` option) at fault."""


class Bad(Exception):
    """A value is wrong; the caller knows where it is."""


@dataclass
class Node:
    value: Any  # a scalar, dict[str, Node] or list[Node]
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)


def tree(node: yaml.Node, where: str) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        yaml.constructor.SafeConstructor().flatten_mapping(node)  # `<<: *anchor` merges
        out: dict[str, Node] = {}
        keys: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise ManifestError(f"{where}:{key_line}: keys must be names, not {key!r}.")
            if key in out:
                raise ManifestError(f"{where}:{key_line}: duplicate key {key!r} (first at line {keys[key]}).")
            out[key] = tree(value_node, where)
            keys[key] = key_line
        return Node(out, line, keys)
    if isinstance(node, yaml.SequenceNode):
        return Node([tree(item, where) for item in node.value], line)
    return Node(_scalar(node), line)


def _scalar(node: yaml.Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def parse(text: str, where: str) -> Node:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ManifestError(f"{where}:{line}: not valid YAML: {exc.problem or exc}") from exc
    if root is None:
        raise ManifestError(f"{where}:1: the manifest is empty.")
    return tree(root, where)
