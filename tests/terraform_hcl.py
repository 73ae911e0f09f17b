"""Terraform configurations read and evaluated without terraform: python-hcl2 parses, this evaluates expressions.

tests/unit/test_terraform.py uses it to compute exactly the values deploy/terraform hands the chart, to check
variable defaults and inputs against their validation blocks, and to read the example's Kiln manifests. The
evaluator covers the part of HCL's expression language the module uses (literals, templates, var/local/path/each,
resource attributes given by the caller, operators, conditionals, for expressions and the functions in FUNCTIONS);
anything else raises Unsupported, so the module cannot drift beyond what the test can check.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import hcl2
import yaml


class Unsupported(ValueError):
    """An expression outside the subset evaluated here."""


class EvalError(ValueError):
    """An expression that Terraform would reject too (what can() and try() catch)."""


# -- reading .tf files ----------------------------------------------------------------------------------------


def unquote_key(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def clean(node):
    """python-hcl2's output without its markers (__is_block__, __comments__), keys unquoted; values stay HCL
    source text."""
    if isinstance(node, dict):
        return {unquote_key(k): clean(v) for k, v in node.items() if not (k.startswith("__") and k.endswith("__"))}
    if isinstance(node, list):
        return [clean(v) for v in node]
    return node


def load_file(path: Path) -> dict:
    with open(path) as fh:
        return clean(hcl2.load(fh))


class Config:
    """One Terraform module directory: its variables, locals, resources, module calls and outputs."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files = {p.name: load_file(p) for p in sorted(directory.glob("*.tf"))}
        self.source = {p.name: p.read_text() for p in sorted(directory.glob("*.tf"))}
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, Any] = {}
        self.outputs: dict[str, dict] = {}
        self.modules: dict[str, dict] = {}
        self.resources: dict[tuple[str, str], dict] = {}
        for parsed in self.files.values():
            for block in parsed.get("variable", []):
                self.variables.update(block)
            for block in parsed.get("locals", []):
                self.locals.update(block)
            for block in parsed.get("output", []):
                self.outputs.update(block)
            for block in parsed.get("module", []):
                self.modules.update(block)
            for block in parsed.get("resource", []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        self.resources[(rtype, name)] = body

    def references(self, prefix: str, outside_variable_blocks: bool = True) -> set[str]:
        """Names referenced as prefix.NAME in the module's source (comments left out), by default not counting
        the variable blocks themselves (a variable named only in its own validation is not used)."""
        texts = []
        for source in self.source.values():
            source = re.sub(r"(?m)#.*$", "", source)
            if outside_variable_blocks:
                source = _without_blocks(source, "variable")
            texts.append(source)
        text = "\n".join(texts)
        return set(re.findall(rf"\b{prefix}\.([A-Za-z_][A-Za-z0-9_-]*)", text))

    def defaults(self) -> dict[str, Any]:
        out = {}
        for name, decl in self.variables.items():
            if "default" in decl:
                out[name] = evaluate(decl["default"], Scope())
        return out

    def scope(self, inputs: dict[str, Any], **extra) -> Scope:
        missing = [n for n, d in self.variables.items() if "default" not in d and n not in inputs]
        if missing:
            raise EvalError(f"required variables not set: {missing}")
        unknown = set(inputs) - set(self.variables)
        if unknown:
            raise EvalError(f"no such variables: {sorted(unknown)}")
        values = {**self.defaults(), **inputs}
        return Scope(var=values, locals_=self.locals, path={"module": str(self.directory)}, **extra)

    def validate_inputs(self, scope: Scope) -> list[str]:
        """The error_message of every validation block whose condition is false for scope's variables."""
        failed = []
        for name, decl in self.variables.items():
            for rule in decl.get("validation", []):
                if evaluate(rule["condition"], scope) is not True:
                    failed.append(f"{name}: {evaluate(rule['error_message'], scope)}")
        return failed


def _without_blocks(source: str, block_type: str) -> str:
    """source less every top-level `block_type "..." { ... }` (braces counted, strings skipped)."""
    out, i = [], 0
    for m in re.finditer(rf'(?m)^{block_type}\s+"[^"]*"\s*\{{', source):
        if m.start() < i:
            continue
        out.append(source[i:m.start()])
        depth, j, in_string = 1, m.end(), False
        while depth and j < len(source):
            c = source[j]
            if in_string:
                in_string = not (c == '"' and source[j - 1] != "\\")
            elif c == '"':
                in_string = True
            else:
                depth += {"{": 1, "}": -1}.get(c, 0)
            j += 1
        i = j
    out.append(source[i:])
    return "".join(out)


# -- the expression evaluator --------------------------------------------------------------------------------

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>")
  | (?P<op>==|!=|<=|>=|&&|\|\||=>|\.\.\.|[-+*/%<>!?:.,()\[\]{}=])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
""", re.VERBOSE)


def _read_string(text: str, i: int) -> tuple[list, int]:
    """A quoted template starting after its opening quote: [literal str | expression source], index after it."""
    parts, buf = [], []
    while i < len(text):
        c = text[i]
        if c == '"':
            if buf:
                parts.append("".join(buf))
            return parts, i + 1
        if c == "\\":
            nxt = text[i + 1]
            buf.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        if text.startswith("$${", i) or text.startswith("%%{", i):
            buf.append(text[i + 1:i + 3])
            i += 3
            continue
        if text.startswith("%{", i):
            raise Unsupported("template directives (%{ ... }) are not evaluated here")
        if text.startswith("${", i):
            if buf:
                parts.append("".join(buf))
                buf = []
            depth, j = 1, i + 2
            while depth:
                if text[j] == '"':
                    _, j = _read_string(text, j + 1)
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            parts.append(("expr", text[i + 2:j - 1]))
            i = j
            continue
        buf.append(c)
        i += 1
    raise Unsupported(f"unterminated string in {text!r}")


def tokenize(text: str) -> list[tuple[str, Any]]:
    tokens, i = [], 0
    while i < len(text):
        m = TOKEN.match(text, i)
        if not m:
            raise Unsupported(f"cannot read {text[i:i + 20]!r} in {text!r}")
        kind = m.lastgroup
        if kind == "string":
            parts, i = _read_string(text, m.end())
            tokens.append(("string", parts))
            continue
        if kind != "ws":
            tokens.append((kind, m.group()))
        i = m.end()
    tokens.append(("end", None))
    return tokens


class Parser:
    """Pratt parser producing a small tree of tuples."""

    def __init__(self, text: str):
        self.text, self.tokens, self.pos = text, tokenize(text), 0

    def peek(self, value):
        kind, current = self.tokens[self.pos]
        return kind in ("op", "ident") and current == value

    def take(self, value=None):
        k, v = self.tokens[self.pos]
        if value is not None and v != value:
            raise Unsupported(f"expected {value!r}, got {v!r} in {self.text!r}")
        self.pos += 1
        return k, v

    def parse(self):
        node = self.expr()
        if self.tokens[self.pos][0] != "end":
            raise Unsupported(f"unexpected {self.tokens[self.pos][1]!r} in {self.text!r}")
        return node

    def expr(self):
        cond = self.binary(0)
        if self.peek("?"):
            self.take("?")
            yes = self.expr()
            self.take(":")
            no = self.expr()
            return ("cond", cond, yes, no)
        return cond

    LEVELS = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/", "%")]

    def binary(self, level):
        if level == len(self.LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.tokens[self.pos][0] == "op" and self.tokens[self.pos][1] in self.LEVELS[level]:
            _, op = self.take()
            left = ("bin", op, left, self.binary(level + 1))
        return left

    def unary(self):
        if self.peek("!") or self.peek("-"):
            _, op = self.take()
            return ("unary", op, self.unary())
        return self.postfix(self.primary())

    def postfix(self, node):
        while True:
            if self.peek("."):
                self.take(".")
                kind, name = self.take()
                if kind == "number":
                    node = ("index", node, ("lit", int(name)))
                elif kind == "ident":
                    node = ("attr", node, name)
                else:
                    raise Unsupported(f"splat or odd traversal in {self.text!r}")
            elif self.peek("["):
                self.take("[")
                if self.peek("*"):
                    raise Unsupported(f"splat in {self.text!r}")
                index = self.expr()
                self.take("]")
                node = ("index", node, index)
            else:
                return node

    def primary(self):
        kind, value = self.take()
        if kind == "number":
            return ("lit", float(value) if any(c in value for c in ".eE") else int(value))
        if kind == "string":
            return ("template", [p if isinstance(p, str) else Parser(p[1]).parse() for p in value])
        if kind == "ident":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            if self.peek("("):
                self.take("(")
                args = []
                while not self.peek(")"):
                    args.append(self.expr())
                    if self.peek("..."):
                        raise Unsupported(f"argument expansion in {self.text!r}")
                    if not self.peek(")"):
                        self.take(",")
                self.take(")")
                return ("call", value, args)
            return ("name", value)
        if value == "(":
            node = self.expr()
            self.take(")")
            return node
        if value == "[":
            if self.peek("for"):
                return self.for_expr("]")
            items = []
            while not self.peek("]"):
                items.append(self.expr())
                if not self.peek("]"):
                    self.take(",")
            self.take("]")
            return ("tuple", items)
        if value == "{":
            if self.peek("for"):
                return self.for_expr("}")
            items = []
            while not self.peek("}"):
                if self.tokens[self.pos][0] == "ident" and self.tokens[self.pos + 1][1] in ("=", ":"):
                    key = ("lit", self.take()[1])
                else:
                    key = self.expr()
                self.take() if self.peek("=") or self.peek(":") else self.take("=")
                items.append((key, self.expr()))
                if self.peek(","):
                    self.take(",")
            self.take("}")
            return ("object", items)
        raise Unsupported(f"unexpected {value!r} in {self.text!r}")

    def for_expr(self, close):
        self.take("for")
        names = [self.take()[1]]
        if self.peek(","):
            self.take(",")
            names.append(self.take()[1])
        self.take("in")
        collection = self.expr()
        self.take(":")
        key = self.expr()
        value = None
        if close == "}":
            self.take("=>")
            value = self.expr()
            if self.peek("..."):
                raise Unsupported(f"grouping for expression in {self.text!r}")
        cond = None
        if self.peek("if"):
            self.take("if")
            cond = self.expr()
        self.take(close)
        return ("for", close, names, collection, key, value, cond)


class Scope:
    def __init__(self, var=None, locals_=None, path=None, each=None, resources=None, modules=None):
        self.var = var or {}
        self.locals_src = locals_ or {}
        self.local_values: dict[str, Any] = {}
        self.computing: set[str] = set()
        self.path = path or {}
        self.each = each
        self.resources = resources or {}
        self.modules = modules or {}
        self.names: dict[str, Any] = {}

    def child(self, **names) -> Scope:
        new = Scope(self.var, self.locals_src, self.path, self.each, self.resources, self.modules)
        new.local_values, new.computing, new.names = self.local_values, self.computing, {**self.names, **names}
        return new

    def local(self, name: str):
        if name not in self.local_values:
            if name not in self.locals_src:
                raise EvalError(f"local.{name} is not defined")
            if name in self.computing:
                raise EvalError(f"local.{name} refers to itself")
            self.computing.add(name)
            try:
                self.local_values[name] = evaluate(self.locals_src[name], self)
            finally:
                self.computing.discard(name)
        return self.local_values[name]

    def lookup(self, name: str):
        if name in self.names:
            return self.names[name]
        if name == "var":
            return _Namespace("var", self.var)
        if name == "local":
            return _LocalNamespace(self)
        if name == "path":
            return _Namespace("path", self.path)
        if name == "each":
            if self.each is None:
                raise EvalError("each outside for_each")
            return _Namespace("each", {"key": self.each, "value": self.each})
        if name == "module":
            return _Namespace("module", self.modules)
        if name in self.resources:
            return _Namespace(name, self.resources[name])
        raise Unsupported(f"unknown name {name!r}")


class _Namespace:
    def __init__(self, prefix, values):
        self.prefix, self.values = prefix, values

    def get(self, name):
        if name not in self.values:
            raise EvalError(f"{self.prefix}.{name} is not defined")
        value = self.values[name]
        return _Namespace(f"{self.prefix}.{name}", value) if isinstance(value, dict) and self.prefix in (
            "module",) else value


class _LocalNamespace:
    def __init__(self, scope):
        self.scope = scope

    def get(self, name):
        return self.scope.local(name)


def _truthy(value, what="condition"):
    if not isinstance(value, bool):
        raise EvalError(f"{what} must be a bool, got {value!r}")
    return value


def _string(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    raise EvalError(f"cannot use {value!r} in a string template")


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value) if "." in str(value) else int(value)
        except (TypeError, ValueError) as exc:
            raise EvalError(f"{value!r} is not a number") from exc
    return value


def _equal(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(
            b, bool):
        return a == b
    return type(a) is type(b) and a == b or (a is None and b is None)


def _eval(node, scope: Scope):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "template":
        parts = node[1]
        if len(parts) == 1 and not isinstance(parts[0], str):
            return _eval(parts[0], scope)  # "${x}" is x itself, of any type
        return "".join(p if isinstance(p, str) else _string(_eval(p, scope)) for p in parts)
    if kind == "name":
        return scope.lookup(node[1])
    if kind == "attr":
        base = _eval(node[1], scope)
        if isinstance(base, (_Namespace, _LocalNamespace)):
            return base.get(node[2])
        if isinstance(base, dict):
            if node[2] not in base:
                raise EvalError(f"no attribute {node[2]!r}")
            return base[node[2]]
        raise EvalError(f"cannot read attribute {node[2]!r} of {base!r}")
    if kind == "index":
        base, index = _eval(node[1], scope), _eval(node[2], scope)
        if isinstance(base, _Namespace):
            return base.get(index)
        try:
            return base[index]
        except (KeyError, IndexError, TypeError) as exc:
            raise EvalError(f"no element {index!r} in {base!r}") from exc
    if kind == "unary":
        value = _eval(node[2], scope)
        return (not _truthy(value)) if node[1] == "!" else -_number(value)
    if kind == "bin":
        op, a, b = node[1], _eval(node[2], scope), _eval(node[3], scope)
        if op == "||":
            return _truthy(a) or _truthy(b)
        if op == "&&":
            return _truthy(a) and _truthy(b)
        if op == "==":
            return _equal(a, b)
        if op == "!=":
            return not _equal(a, b)
        a, b = _number(a), _number(b)
        return {"<": lambda: a < b, ">": lambda: a > b, "<=": lambda: a <= b, ">=": lambda: a >= b,
                "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                "%": lambda: a % b}[op]()
    if kind == "cond":
        return _eval(node[2] if _truthy(_eval(node[1], scope)) else node[3], scope)
    if kind == "tuple":
        return [_eval(item, scope) for item in node[1]]
    if kind == "object":
        out = {}
        for key, value in node[1]:
            out[_string(_eval(key, scope)) if key[0] != "name" else key[1]] = _eval(value, scope)
        return out
    if kind == "for":
        _, close, names, coll, key_expr, value_expr, cond = node
        collection = _eval(coll, scope)
        if isinstance(collection, dict):
            pairs = list(collection.items())
        elif isinstance(collection, (list, tuple, frozenset, set)):
            items = sorted(collection) if isinstance(collection, (set, frozenset)) else collection
            pairs = list(items if len(names) == 1 else enumerate(items))
            if len(names) == 1:
                pairs = [(None, v) for v in pairs]
        else:
            raise EvalError(f"cannot iterate over {collection!r}")
        out_list, out_map = [], {}
        for k, v in pairs:
            bound = {names[0]: v} if len(names) == 1 else {names[0]: k, names[1]: v}
            inner = scope.child(**bound)
            if cond is not None and not _truthy(_eval(cond, inner)):
                continue
            if close == "]":
                out_list.append(_eval(key_expr, inner))
            else:
                out_map[_string(_eval(key_expr, inner))] = _eval(value_expr, inner)
        return out_list if close == "]" else out_map
    if kind == "call":
        name, args = node[1], node[2]
        if name == "can":
            try:
                _eval(args[0], scope)
                return True
            except EvalError:
                return False
        if name == "try":
            for arg in args:
                try:
                    return _eval(arg, scope)
                except EvalError:
                    continue
            raise EvalError("try(): no argument could be evaluated")
        if name not in FUNCTIONS:
            raise Unsupported(f"function {name}() is not evaluated here")
        return FUNCTIONS[name](*[_eval(a, scope) for a in args])
    raise Unsupported(f"node {kind}")


def _regex(pattern, text):
    m = re.search(pattern, _string(text))
    if not m:
        raise EvalError(f"{pattern!r} does not match {text!r}")
    return m.group() if not m.groups() else list(m.groups())


def _merge(*maps):
    out = {}
    for m in maps:
        if m is None:
            continue
        if not isinstance(m, dict):
            raise EvalError(f"merge() of {m!r}")
        out.update(m)
    return out


def _length(value):
    if value is None or isinstance(value, (bool, int, float)):
        raise EvalError(f"length() of {value!r}")
    return len(value)


def _yamlencode(value):
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False)


def _yamldecode(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EvalError(str(exc)) from exc


def _keys(value):
    if not isinstance(value, dict):
        raise EvalError(f"keys() of {value!r}")
    return sorted(value)


def _substr(text, offset, length):
    text = _string(text)
    return text[offset:] if length == -1 else text[offset:offset + length]


FUNCTIONS = {
    "alltrue": lambda xs: all(_truthy(x) for x in xs),
    "anytrue": lambda xs: any(_truthy(x) for x in xs),
    "compact": lambda xs: [x for x in xs if x not in ("", None)],
    "concat": lambda *xs: [x for lst in xs for x in lst],
    "contains": lambda xs, v: any(_equal(x, v) for x in xs),
    "distinct": lambda xs: list(dict.fromkeys(xs)),
    "endswith": lambda s, suffix: _string(s).endswith(suffix),
    "floor": lambda x: math.floor(_number(x)),
    "jsonencode": lambda v: json.dumps(v, separators=(",", ":")),
    "keys": _keys,
    "length": _length,
    "lower": lambda s: _string(s).lower(),
    "merge": _merge,
    "regex": _regex,
    "regexall": lambda pattern, text: [m.group() for m in re.finditer(pattern, _string(text))],
    "setsubtract": lambda a, b: sorted(set(a) - set(b)),
    "startswith": lambda s, prefix: _string(s).startswith(prefix),
    "substr": _substr,
    "tostring": _string,
    "toset": lambda xs: sorted(set(xs)),
    "trimsuffix": lambda s, suffix: _string(s)[:-len(suffix)] if suffix and _string(s).endswith(suffix) else s,
    "values": lambda m: [m[k] for k in sorted(m)],
    "yamldecode": _yamldecode,
    "yamlencode": _yamlencode,
}


def evaluate(value, scope: Scope):
    """A value as python-hcl2 gives it (HCL source in strings, nested dicts and lists), evaluated."""
    if isinstance(value, dict):
        return {k: evaluate(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [evaluate(v, scope) for v in value]
    if isinstance(value, str):
        if value.startswith("${") and value.endswith("}"):
            return _eval(Parser(value[2:-1]).parse(), scope)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return _eval(Parser(value).parse(), scope)
        raise Unsupported(f"cannot read {value!r}")
    return value
