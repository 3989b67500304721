"""Tunable parameters of any text file: where each one lives, its value, and how to set it.

A parameter is found by a *locator* and rewritten in place, so formatting, comments and every
other byte of the file survive:

- `PyName`: a top-level `NAME = <literal>` of a Python file. Found by itself for UPPER_CASE and
  `_PRIVATE_CASE` numbers; any other top-level name when `[search]` names it.
- `PyDotted`: a keyword default or a class attribute named in `[search]` by a dotted path:
  `detect.threshold` (the default of `def detect(..., threshold=0.2)`), `Model.forward.dropout`,
  `Config.WIDTH`.
- `RegexSpan`: the one group of a regex that matches exactly once in its file.
- `MarkerSpan`: a `ar: NAME` marker in a comment (`#`, `--`, `//`, `;` or `/*`). At the end of a
  line of code it marks that line: the span is the code before the comment (for a number, the one
  number in it). On a line of its own it opens a block that `ar: end` closes; the block's lines
  are the span. Choices of a span are alternative texts (join orders, index definitions).
- `KeyPath`: a dotted key path (`server.workers`, `stages.0.size`) in a TOML, YAML or JSON file.

Guarantees: every `read` and `write` locates the span again in the text it is given (a kept
change may have moved it); `write` reads the value back and raises `LocateError` when it differs,
so a proposal never carries a value other than the one sampled; `resolve` turns every problem with
a `[search]` entry into one `ConfigError` line that names the key and the fix.
"""

from __future__ import annotations

import ast
import io
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import SearchParam
from ..errors import ConfigError

#: a number in free text: not part of a word (`O3`, `x2`) or of a longer number
NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_AUTO_NAME_RE = re.compile(r"_?[A-Z][A-Z0-9_]*")
_COMMENT = r"(?:#|--|//|;|/\*)"
_END_RE = re.compile(rf"^[ \t]*{_COMMENT}[ \t]*ar:[ \t]*end\b.*$", re.M)


class LocateError(Exception):
    """A locator cannot find (or set) its span in the given text."""


def parse_number(text: str) -> int | float | None:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if NUMBER_RE.fullmatch(text):
        return float(text)
    return None


def format_number(value: Any, was_int: bool) -> str:
    """A number as a literal: ints stay ints, floats keep a point or an exponent."""
    if isinstance(value, bool) or isinstance(value, str):
        return repr(value)
    if was_int or isinstance(value, int):
        return str(int(round(value)))
    if value == 0:
        return "0.0"
    text = f"{value:.4g}"
    if "e" not in text and "." not in text:
        text += ".0"
    return text


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return format_number(a, False) == format_number(b, False)
    return a == b


class Locator(ABC):
    """Where one parameter lives in one file."""

    def __init__(self, name: str, path: str):
        self.name = name
        self.path = path
        self.is_int = False          # the value in the file was an integer (keep it one)

    @abstractmethod
    def read(self, source: str) -> Any:
        """The parameter's value in `source`; LocateError when it is not there."""

    @abstractmethod
    def _write(self, source: str, value: Any) -> str: ...

    def write(self, source: str, value: Any) -> str:
        out = self._write(source, value)
        got = self.read(out)
        if not same_value(got, value if not self.is_int or isinstance(value, str)
                          else int(round(value))):
            raise LocateError(f"after writing {value!r} it reads back {got!r}: make the locator "
                              f"match every value it may take")
        return out

    def describe(self) -> str:
        return f"{self.path}"


# -- Python ---------------------------------------------------------------------------------
def _literal(node: ast.AST) -> tuple[bool, Any]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return True, node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and type(node.operand.value) in (int, float)):
        return True, -node.operand.value
    return False, None


def _offsets(source: str, node: ast.AST) -> tuple[int, int]:
    """Character offsets of a node (ast gives lines and byte columns)."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))

    def char(line: int, col: int) -> int:
        text = lines[line - 1] if line - 1 < len(lines) else ""
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8", "replace"))

    return char(node.lineno, node.col_offset), char(node.end_lineno, node.end_col_offset)


def _assignments(body: list[ast.stmt]) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) of each single-target assignment in body, annotated ones included."""
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            yield node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            yield node.target, node.value


def _assigned(body: list[ast.stmt], name: str) -> ast.AST | None:
    for target, value in _assignments(body):
        if isinstance(target, ast.Name) and target.id == name:
            return value
    return None


def _parse(source: str, path: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise LocateError(f"{path} does not parse as Python (line {e.lineno})") from None


class _PyLiteral(Locator):
    def _node(self, source: str) -> ast.AST:
        raise NotImplementedError

    def read(self, source: str) -> Any:
        ok, value = _literal(self._node(source))
        if not ok:
            raise LocateError(f"{self.describe()} is not a literal number, string or bool")
        return value

    def _write(self, source: str, value: Any) -> str:
        start, end = _offsets(source, self._node(source))
        return source[:start] + format_number(value, self.is_int) + source[end:]


class PyName(_PyLiteral):
    """`NAME = <literal>` at the top level of a Python file."""

    def _node(self, source: str) -> ast.AST:
        node = _assigned(_parse(source, self.path).body, self.name)
        if node is None:
            raise LocateError(f"{self.path} has no top-level assignment to {self.name}")
        return node

    def describe(self) -> str:
        return f"{self.path}: {self.name}"


class PyDotted(_PyLiteral):
    """`func.kwarg`, `Class.method.kwarg` or `Class.ATTR` in a Python file."""

    def __init__(self, name: str, path: str, dotted: str):
        super().__init__(name, path)
        self.parts = dotted.split(".")

    def _node(self, source: str) -> ast.AST:
        scope: Any = _parse(source, self.path)
        walked = []
        for part in self.parts[:-1]:
            body = scope.body
            scope = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                            ast.AsyncFunctionDef))
                          and n.name == part), None)
            walked.append(part)
            if scope is None:
                raise LocateError(f"{self.path} defines no function or class {'.'.join(walked)}")
        last = self.parts[-1]
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = scope.args
            positional = a.posonlyargs + a.args
            for arg, default in zip(positional[len(positional) - len(a.defaults):], a.defaults, strict=True):
                if arg.arg == last:
                    return default
            for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                if arg.arg == last and default is not None:
                    return default
            raise LocateError(f"{'.'.join(self.parts[:-1])}() in {self.path} has no argument "
                              f"{last!r} with a default")
        node = _assigned(scope.body, last)
        if node is None:
            raise LocateError(f"{'.'.join(self.parts)} is not assigned in {self.path}")
        return node

    def describe(self) -> str:
        return f"{self.path}: {'.'.join(self.parts)}"


@dataclass
class Constant:
    """A numeric top-level constant the agent found by itself."""

    name: str
    path: str
    value: int | float
    line: int          # 1-based
    col: int           # start column of the literal (bytes, including a leading minus)
    end_col: int

    @property
    def is_int(self) -> bool:
        return isinstance(self.value, int)


def is_auto_name(name: str) -> bool:
    """UPPER_CASE or _PRIVATE_CASE (not dunder names)."""
    return bool(_AUTO_NAME_RE.fullmatch(name))


def find_constants(path: str, source: str) -> list[Constant]:
    """Top-level UPPER_CASE and _PRIVATE_CASE assignments of int/float literals (one line each)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for target, value in _assignments(tree.body):
        if not (isinstance(target, ast.Name) and is_auto_name(target.id)):
            continue
        ok, lit = _literal(value)
        if (not ok or isinstance(lit, (bool, str)) or value.lineno != value.end_lineno):
            continue
        found.append(Constant(target.id, path, lit, value.lineno, value.col_offset,
                              value.end_col_offset))
    return found


# -- free text --------------------------------------------------------------------------------
class _TextSpan(Locator):
    """A span of text; with `numeric` the span is a number, else the whole span is the value."""

    def __init__(self, name: str, path: str, numeric: bool):
        super().__init__(name, path)
        self.numeric = numeric

    @abstractmethod
    def span(self, source: str) -> tuple[int, int]: ...

    def _number(self, source: str) -> tuple[int, int]:
        start, end = self.span(source)
        nums = list(NUMBER_RE.finditer(source, start, end))
        if len(nums) != 1:
            raise LocateError(f"{self.describe()} holds {len(nums)} numbers, not one: use a "
                              f"regex locator, or choices = [...] for alternative texts")
        return nums[0].start(), nums[0].end()

    def read(self, source: str) -> Any:
        if self.numeric:
            s, e = self._number(source)
            return parse_number(source[s:e])
        s, e = self.span(source)
        return source[s:e]

    def _write(self, source: str, value: Any) -> str:
        s, e = self._number(source) if self.numeric else self.span(source)
        text = value if isinstance(value, str) else format_number(value, self.is_int)
        return source[:s] + text + source[e:]


class RegexSpan(_TextSpan):
    def __init__(self, name: str, path: str, pattern: str, numeric: bool):
        super().__init__(name, path, numeric)
        self.regex = re.compile(pattern, re.M)

    def span(self, source: str) -> tuple[int, int]:
        matches = list(self.regex.finditer(source))
        if len(matches) != 1:
            raise LocateError(f"regex {self.regex.pattern!r} matches {len(matches)} times in "
                              f"{self.path}, not once: make it more specific")
        return matches[0].span(1)

    def read(self, source: str) -> Any:
        if self.numeric:
            s, e = self.span(source)
            value = parse_number(source[s:e])
            if value is None:
                raise LocateError(f"regex {self.regex.pattern!r} captures {source[s:e]!r} in "
                                  f"{self.path}, not a number: add choices = [...] for texts")
            return value
        return super().read(source)

    def _write(self, source: str, value: Any) -> str:
        s, e = self.span(source)
        text = value if isinstance(value, str) else format_number(value, self.is_int)
        return source[:s] + text + source[e:]

    def describe(self) -> str:
        return f"{self.path}: /{self.regex.pattern}/"


class MarkerSpan(_TextSpan):
    def __init__(self, name: str, path: str, numeric: bool):
        super().__init__(name, path, numeric)
        self.regex = re.compile(rf"{_COMMENT}[ \t]*ar:[ \t]*{re.escape(name)}(?![\w.-])", re.M)

    def span(self, source: str) -> tuple[int, int]:
        marks = list(self.regex.finditer(source))
        if len(marks) != 1:
            raise LocateError(f"marker 'ar: {self.name}' occurs {len(marks)} times in {self.path}, "
                              f"not once")
        m = marks[0]
        line_start = source.rfind("\n", 0, m.start()) + 1
        code = source[line_start:m.start()]
        if code.strip():          # at the end of a line of code: that code is the span
            lead = len(code) - len(code.lstrip())
            return line_start + lead, line_start + len(code.rstrip())
        body_start = source.find("\n", m.end())
        if body_start < 0:
            raise LocateError(f"marker 'ar: {self.name}' in {self.path} opens a block at the end "
                              f"of the file: close it with a line 'ar: end'")
        body_start += 1
        end = _END_RE.search(source, body_start)
        if end is None:
            raise LocateError(f"marker 'ar: {self.name}' in {self.path} opens a block that no "
                              f"'ar: end' line closes: add one after the block")
        return body_start, end.start()

    def describe(self) -> str:
        return f"{self.path}: ar: {self.name}"


# -- structured files -------------------------------------------------------------------------
def _keys(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


class KeyPath(Locator):
    """A dotted key path in a TOML (tomlkit), YAML (ruamel.yaml) or JSON file, edited round-trip."""

    def __init__(self, name: str, path: str, key: str):
        super().__init__(name, path)
        self.key = key
        self.kind = ("toml" if path.endswith(".toml") else "json" if path.endswith(".json")
                     else "yaml" if path.endswith((".yaml", ".yml")) else None)
        if self.kind is None:
            raise LocateError(f"{path} is not a .toml, .yaml, .yml or .json file: key locators "
                              f"read only those (use a regex or a marker)")

    def _load(self, source: str) -> Any:
        try:
            if self.kind == "json":
                return json.loads(source)
            if self.kind == "toml":
                import tomlkit
                return tomlkit.parse(source)
            from ruamel.yaml import YAML
            return YAML(typ="rt").load(source)
        except ImportError as e:
            raise LocateError(f"key locators in {self.kind.upper()} files need {e.name}: "
                              f"pip install {'tomlkit' if self.kind == 'toml' else 'ruamel.yaml'}"
                              ) from None
        except Exception as e:
            raise LocateError(f"{self.path} does not parse as {self.kind.upper()}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def _walk(self, doc: Any) -> tuple[Any, str | int]:
        keys = _keys(self.key)
        node = doc
        for i, k in enumerate(keys[:-1]):
            try:
                node = node[k]
            except (KeyError, IndexError, TypeError):
                raise LocateError(f"{self.path} has no key {'.'.join(map(str, keys[:i + 1]))}"
                                  ) from None
        return node, keys[-1]

    def read(self, source: str) -> Any:
        node, last = self._walk(self._load(source))
        try:
            value = node[last]
        except (KeyError, IndexError, TypeError):
            raise LocateError(f"{self.path} has no key {self.key}") from None
        if isinstance(value, (dict, list)):
            raise LocateError(f"{self.key} in {self.path} is a table or list, not a value")
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        return str(value) if value is not None else None

    def _write(self, source: str, value: Any) -> str:
        doc = self._load(source)
        node, last = self._walk(doc)
        if self.is_int and isinstance(value, float):
            value = int(round(value))
        node[last] = value
        if self.kind == "json":
            indent = next((len(ln) - len(ln.lstrip()) for ln in source.splitlines()[1:2]), 0)
            return json.dumps(doc, indent=indent or None, ensure_ascii=False) + (
                "\n" if source.endswith("\n") else "")
        if self.kind == "toml":
            import tomlkit
            return tomlkit.dumps(doc)
        from ruamel.yaml import YAML
        from ruamel.yaml.util import load_yaml_guess_indent
        _, indent, seq_offset = load_yaml_guess_indent(source)
        yaml = YAML(typ="rt")
        yaml.preserve_quotes = True
        yaml.indent(mapping=indent or 2, sequence=indent or 2, offset=seq_offset or 0)
        buf = io.StringIO()
        yaml.dump(doc, buf)
        return buf.getvalue()

    def describe(self) -> str:
        return f"{self.path}: {self.key}"


# -- resolving [search] -------------------------------------------------------------------------
@dataclass
class Param:
    """A located parameter: its locator and the value in the files it was resolved against."""

    name: str
    locator: Locator
    value: Any

    @property
    def path(self) -> str:
        return self.locator.path


def _error(name: str, message: str) -> ConfigError:
    return ConfigError(f"autoresearch.toml: [search] {name}: {message}")


def _what(name: str, entry: SearchParam) -> str:
    if entry.regex is not None:
        return f"regex {entry.regex!r}"
    if entry.marker:
        return f"marker 'ar: {name}'"
    if entry.key is not None:
        return f"key {entry.key!r}"
    return f"{name!r}"


def _locate_in(name: str, entry: SearchParam, files: dict[str, str], make) -> Param:
    """Try `make(path)` on the entry's file, or on every editable file when none is given."""
    if entry.file is not None:
        if entry.file not in files:
            raise _error(name, f"file {entry.file!r} is not an editable file — fix 'file' or add "
                               f"it to 'editable'")
        candidates = [entry.file]
    else:
        candidates = sorted(files)
    found, problems = [], []
    for path in candidates:
        try:
            loc = make(path)
            value = loc.read(files[path])
        except LocateError as e:
            problems.append(str(e))
            continue
        found.append(Param(name, loc, value))
    if len(found) == 1:
        return found[0]
    if not found:
        # a problem where the locator matched something says more than "0 times" everywhere
        telling = [p for p in problems if " 0 times" not in p]
        if telling or len(problems) == 1:
            why = (telling or problems)[0]
        else:
            why = f"{_what(name, entry)} matches in no editable file"
        raise _error(name, f"{why} — fix the locator or the file")
    raise _error(name, f"found in {', '.join(p.path for p in found)} — add file = \"...\" to say "
                       f"which")


def resolve(name: str, entry: SearchParam, files: dict[str, str]) -> Param:
    """The parameter a `[search]` entry names, located in the editable files."""
    numeric = entry.choices is None or all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in entry.choices)
    if entry.regex is not None:
        param = _locate_in(name, entry, files,
                           lambda p: RegexSpan(name, p, entry.regex, numeric))
    elif entry.marker:
        param = _locate_in(name, entry, files, lambda p: MarkerSpan(name, p, numeric))
    elif entry.key is not None:
        def make(p: str) -> Locator:
            return KeyPath(name, p, entry.key)
        param = _locate_in(name, entry, files, make)
    else:
        py = {p: s for p, s in files.items() if p.endswith(".py")}
        if not py:
            raise _error(name, "no locator (regex, marker or key) and no editable Python file — "
                               "add a locator")

        def make_py(p: str) -> Locator:
            return PyDotted(name, p, name) if "." in name else PyName(name, p)
        try:
            param = _locate_in(name, entry, py, make_py)
        except ConfigError as e:
            raise ConfigError(str(e).replace(" — fix the locator or the file",
                                             " — fix the name, or add a locator (regex, marker or "
                                             "key)")) from None
    value = param.value
    param.locator.is_int = isinstance(value, int) and not isinstance(value, bool)
    if entry.choices is None and (isinstance(value, (bool, str)) or value is None):
        raise _error(name, f"its value in {param.path} is {value!r}, not a number — give "
                           f"choices = [...] (alternative values or texts)")
    return param


def auto_params(files: dict[str, str]) -> dict[str, Param]:
    """The numeric UPPER_CASE and _PRIVATE_CASE constants of the editable Python files."""
    out: dict[str, Param] = {}
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        for c in find_constants(path, files[path]):
            if c.name not in out:
                loc = PyName(c.name, path)
                loc.is_int = c.is_int
                out[c.name] = Param(c.name, loc, c.value)
    return out


__all__ = ["Constant", "KeyPath", "LocateError", "Locator", "MarkerSpan", "Param", "PyDotted",
           "PyName", "RegexSpan", "auto_params", "find_constants", "format_number",
           "is_auto_name", "parse_number", "resolve"]
