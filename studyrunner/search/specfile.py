"""YAML spec files read with line numbers: every error names the file, the line and the key.

``load_spec(path, Model, problems)`` parses a file into a frozen pydantic model (``StrictModel``:
unknown keys, non-finite numbers and booleans given for numbers are errors), then runs the model's
own semantic checks; sweeps (``spec``) and narrative studies use it alike.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from studyrunner.errors import StudyrunnerError

__all__ = ["SpecError", "StrictModel", "Problem", "load_spec", "load_yaml", "load_with_nodes", "where", "allowed_fields"]

Problem = tuple[str, tuple[Any, ...]]  # (message, location in the file)
MAX_YAML_NODES = 100_000  # YAML nodes a file may expand to (aliases included)


class SpecError(StudyrunnerError):
    """A YAML file that cannot be used; the message names the file, line and key."""


class StrictModel(BaseModel):
    """Frozen; every unknown key, non-finite number (.nan, .inf) and boolean given for a number
    is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(v, bool) and field is not None and not _allows_bool(field.annotation):
            raise ValueError("expected a number or text, got a boolean (true/false/yes/no/on/off)")
        return v


def _allows_bool(tp: Any) -> bool:
    if tp is bool or tp is Any:
        return True
    return any(_allows_bool(a) for a in typing.get_args(tp) if a is not type(None))


# --------------------------------------------------------------------------- YAML with line numbers


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or a syntax error names file and line."""
    data, _ = load_with_nodes(Path(path))
    return data


def _read_text(p: Path) -> str:
    """The file's text; a missing file, a folder, a binary or non-UTF-8 file is named as such."""
    if p.is_dir():
        raise SpecError(f"{p}: is a directory; expected a YAML file")
    if not p.is_file():
        raise SpecError(f"{p}: no such file")
    raw = p.read_bytes()
    if len(raw) > 2**20:
        raise SpecError(f"{p}: {len(raw)} bytes is too large for a sweep or study file (at most 1 MiB)")
    if b"\x00" in raw:
        raise SpecError(f"{p}: not a text file (it holds NUL bytes); expected a YAML file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"{p}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def _check_keys(node: yaml.MappingNode, p: Path) -> None:
    """No key twice in one mapping (YAML would keep the last one silently)."""
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if key.value in seen:
            raise SpecError(
                f"{p}, line {key.start_mark.line + 1}: key {key.value!r} is given twice "
                f"(first on line {seen[key.value]}); keep one"
            )
        seen[key.value] = key.start_mark.line + 1


def _check_nodes(root: yaml.Node | None, p: Path) -> None:
    """Refuse keys given twice in one mapping, aliases that contain themselves and alias bombs."""
    count = 0

    def walk(node: yaml.Node, above: frozenset[int]) -> None:
        nonlocal count
        count += 1
        if count > MAX_YAML_NODES:
            raise SpecError(f"{p}: expands to more than {MAX_YAML_NODES} YAML nodes (nested aliases?); simplify the file")
        if id(node) in above:
            raise SpecError(f"{p}, line {node.start_mark.line + 1}: a recursive YAML alias (a node that contains itself)")
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, p)
        children: list[yaml.Node] = list(node.value) if isinstance(node, yaml.SequenceNode) else []
        children += [v for _, v in node.value] if isinstance(node, yaml.MappingNode) else []
        for child in children:
            walk(child, above | {id(node)})

    if root is not None:
        try:
            walk(root, frozenset())
        except RecursionError:
            raise SpecError(f"{p}: nested too deeply to be a sweep or study file") from None


def load_with_nodes(p: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    text = _read_text(p)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_nodes(node, p)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{p}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}, node
    if not isinstance(data, dict):
        raise SpecError(f"{p}, line 1: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data, node


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node along ``loc`` (a pydantic error location)."""
    line = None
    parts = [str(x) if not isinstance(x, int) else x for x in loc]
    i = 0
    while i < len(parts):
        key = parts[i]
        if isinstance(node, yaml.MappingNode):
            match = []
            for j in range(len(parts), i, -1):  # dotted YAML keys ("optim.lr: 1") match several parts
                joined = ".".join(str(x) for x in parts[i:j])
                match = [(k, v, j) for k, v in node.value if k.value == joined]
                if match:
                    break
            if not match:
                break
            line, node, i = match[0][0].start_mark.line + 1, match[0][1], match[0][2]
            continue
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
            i += 1
            continue
        break
    return line


def where(p: Path, node: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    line = _line(node, loc)
    return f"{p}{f', line {line}' if line else ''}"


def _parse(cls: type[Any], data: dict[str, Any], p: Path, node: yaml.Node | None) -> Any:
    """``cls(**data)``; a pydantic error becomes a SpecError naming file, line, key and what is allowed."""
    try:
        return cls(**data)
    except ValidationError as exc:
        errors = exc.errors()  # a misspelt key also reports the key it should have been: name the misspelling
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith(("function-", "literal["))))
        key = ".".join(str(x) for x in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed here: {', '.join(allowed_fields(loc[:-1], cls))}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        shown = err["type"] not in ("missing", "extra_forbidden") and not isinstance(err.get("input"), dict)
        got = f" (got {err['input']!r})" if shown else ""
        raise SpecError(f"{where(p, node, loc)}: {key}: {msg}{got}") from None


M = TypeVar("M", bound=BaseModel)


def load_spec(path: str | Path, cls: type[M], problems: Callable[[M], list[Problem]]) -> M:
    """``cls`` parsed from the YAML file at ``path`` (its ``source`` set), then checked by
    ``problems``; the first problem found is a SpecError naming the file and the line."""
    p = Path(path)
    data, node = load_with_nodes(p)
    spec: M = _parse(cls, {**data, "source": str(p)}, p, node)
    for problem, loc in problems(spec):
        raise SpecError(f"{where(p, node, loc)}: {problem}")
    return spec


def allowed_fields(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """Field names allowed at ``loc`` (the parent of an unknown key), found by following the
    models' annotations down from ``root``: a list or dict field leads to its item type."""
    tp: Any = root
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            tp = field.annotation if field else None
        else:  # list[Step] at an index, dict[str, ParamSpec] at a key
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[-1] if args else None
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return ["<config key>"]
    return [f for f in tp.model_fields if f != "source"]
