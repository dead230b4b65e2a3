"""Parser for the run-search filter language.

Turns ``metrics.loss < 0.5 AND (params.opt = 'adam' OR tags."team name" = 'ml')`` into a
small typed AST. Compiling the AST to SQL lives elsewhere, so this module stays pure Python
and can reject mistakes with an exact position before any query reaches the database.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

MAX_FILTER_LENGTH = 10_000
MAX_DEPTH = 50
MAX_IN_ITEMS = 1_000

Kind: TypeAlias = Literal["attributes", "params", "metrics", "tags"]
Scalar: TypeAlias = str | int | float | bool
_Category: TypeAlias = Literal["number", "string", "time"]
_TokenKind: TypeAlias = Literal[
    "word", "string", "dquoted", "backtick", "number", "op", "punct", "eof"
]

_KINDS: tuple[Kind, ...] = ("params", "metrics", "tags", "attributes")
_NUMBER_ATTRIBUTES = ("id", "experiment_id", "duration_ms")
_STRING_ATTRIBUTES = ("name", "status")
_TIME_ATTRIBUTES = ("start_time", "end_time", "created_at")  # ms since epoch or ISO-8601
ATTRIBUTES = _NUMBER_ATTRIBUTES + _STRING_ATTRIBUTES + _TIME_ATTRIBUTES
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS", "NULL", "TRUE", "FALSE"})
_COMPARE_OPS = frozenset({"=", "!=", ">", ">=", "<", "<="})
_OPS_HINT = "use =, !=, <, <=, >, >=, LIKE, ILIKE, IN"

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./:]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-./:]+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]+")
_OPERATOR = re.compile(r"[=!<>]+")
_ESCAPES = {"'": "'", '"': '"', "\\": "\\"}
_QUOTE_KINDS: dict[str, _TokenKind] = {"'": "string", '"': "dquoted", "`": "backtick"}


@dataclass(frozen=True)
class Identifier:
    """What a comparison looks at; ``position`` lets the SQL layer report errors too."""

    kind: Kind
    key: str
    position: int


@dataclass(frozen=True)
class Comparison:
    """One test on one identifier; ``value`` is a tuple for IN and None for IS NULL."""

    identifier: Identifier
    op: str
    value: Scalar | tuple[Scalar, ...] | None
    position: int


@dataclass(frozen=True)
class BoolOp:
    """AND/OR over flattened operands, so SQL compilation needs no re-association."""

    op: Literal["AND", "OR"]
    operands: tuple[Expr, ...]


Expr: TypeAlias = Comparison | BoolOp


@dataclass(frozen=True)
class OrderKey:
    """One ``order_by`` term."""

    identifier: Identifier
    descending: bool


def _excerpt(text: str, position: int, width: int = 30) -> str:
    """Return a one-line slice of ``text`` around ``position`` for error messages."""
    start, end = max(0, position - width), min(len(text), position + width)
    snippet = " ".join(text[start:end].split())
    return ("..." if start else "") + snippet + ("..." if end < len(text) else "")


class FilterSyntaxError(ValueError):
    """A filter or order_by is invalid; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int, text: str) -> None:
        self.message = message
        self.position = position
        self.text = text
        excerpt = _excerpt(text, position)
        suffix = f": {excerpt}" if excerpt else ""
        super().__init__(f"{message} at position {position}{suffix}")

    def __reduce__(self) -> tuple[type[FilterSyntaxError], tuple[str, int, str]]:
        # The default reduce would call __init__ with the formatted string only.
        return (type(self), (self.message, self.position, self.text))


@dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    text: str  # exactly as written, quotes included
    value: str | int | float
    pos: int


def _read_quoted(text: str, start: int) -> _Token:
    """Read a quoted token; backticks take no escapes so keys can hold backslashes."""
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return _Token(_QUOTE_KINDS[quote], text[start : i + 1], "".join(out), start)
        if ch == "\\" and quote != "`" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))  # unknown escapes stay verbatim (LIKE \%)
            i += 2
            continue
        out.append(ch)
        i += 1
    what = "quoted key" if quote == "`" else "string"
    raise FilterSyntaxError(f"unterminated {what} starting", start, text)


def _read_number(text: str, start: int, end: int) -> _Token:
    """Read a number; letters or dots glued to it (``1abc``, ``1.2.3``) make it invalid."""
    tail = _NUMBER_TAIL.match(text, end)
    raw = text[start : tail.end() if tail else end]
    try:
        value: int | float = int(raw) if raw.lstrip("+-").isdigit() else float(raw)
    except ValueError:  # glued letters, or more digits than int() accepts
        value = math.nan
    if tail or not math.isfinite(value):
        raise FilterSyntaxError(f"invalid number '{raw}'", start, text)
    return _Token("number", raw, value, start)


def _tokenize(text: str) -> list[_Token]:
    """Split ``text`` into tokens, ending with an ``eof`` token at ``len(text)``."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "(),":
            tok = _Token("punct", ch, ch, i)
        elif ch in "'\"`":
            tok = _read_quoted(text, i)
        elif m := _NUMBER.match(text, i):
            tok = _read_number(text, i, m.end())
        elif m := _WORD.match(text, i):
            tok = _Token("word", m.group(), m.group(), i)
        elif m := _OPERATOR.match(text, i):
            tok = _Token("op", m.group(), m.group(), i)
        else:
            raise FilterSyntaxError(f"unexpected character {ch!r}", i, text)
        tokens.append(tok)
        i += len(tok.text)
    tokens.append(_Token("eof", "", "", len(text)))
    return tokens


def _display(ident: Identifier) -> str:
    if ident.kind == "attributes":
        return ident.key
    key = ident.key if _BARE_KEY.fullmatch(ident.key) else f"`{ident.key}`"
    return f"{ident.kind}.{key}"


def _kind(prefix: str) -> Kind | None:
    """Map a prefix, its singular, or the attr/run aliases to the canonical kind."""
    low = prefix.lower()
    if low in ("attr", "run"):
        return "attributes"
    return next((kind for kind in _KINDS if low in (kind, kind[:-1])), None)


def _category(ident: Identifier) -> _Category:
    """The value type a column holds, which decides the literals it may be compared with."""
    if ident.kind == "attributes":
        if ident.key in _TIME_ATTRIBUTES:
            return "time"
        return "string" if ident.key in _STRING_ATTRIBUTES else "number"
    return "number" if ident.kind == "metrics" else "string"


class _Parser:
    """Recursive-descent parser over a token list; ``what`` names the input in messages."""

    def __init__(self, text: str, what: str) -> None:
        if len(text) > MAX_FILTER_LENGTH:
            raise FilterSyntaxError(
                f"{what} is too long ({len(text)} characters; the limit is {MAX_FILTER_LENGTH})",
                MAX_FILTER_LENGTH,
                text,
            )
        self.text = text
        self.what = what
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def is_kw(self, *keywords: str) -> bool:
        return self.tok.kind == "word" and self.tok.text.upper() in keywords

    def is_punct(self, ch: str) -> bool:
        return self.tok.kind == "punct" and self.tok.text == ch

    def describe(self, tok: _Token) -> str:
        if tok.kind == "eof":
            return f"end of {self.what}"
        if tok.kind == "word" and tok.text.upper() in _KEYWORDS:
            return tok.text.upper()
        if tok.kind in ("string", "dquoted", "number"):
            return f"{'number' if tok.kind == 'number' else 'string'} {tok.text}"
        return tok.text if tok.kind == "backtick" else f"'{tok.text}'"

    def error(self, message: str, position: int | None = None) -> FilterSyntaxError:
        return FilterSyntaxError(message, self.tok.pos if position is None else position, self.text)

    def found(self, expected: str) -> FilterSyntaxError:
        return self.error(f"expected {expected} but found {self.describe(self.tok)}")

    def chain(self, op: Literal["AND", "OR"], operand: Callable[[int], Expr], depth: int) -> Expr:
        operands: list[Expr] = []
        while True:
            expr = operand(depth)
            if isinstance(expr, BoolOp) and expr.op == op:
                operands.extend(expr.operands)  # (a AND b) AND c is flattened too
            else:
                operands.append(expr)
            if not self.is_kw(op):
                break
            self.advance()
        return operands[0] if len(operands) == 1 else BoolOp(op, tuple(operands))

    def or_expr(self, depth: int) -> Expr:
        return self.chain("OR", self.and_expr, depth)

    def and_expr(self, depth: int) -> Expr:
        return self.chain("AND", self.primary, depth)

    def primary(self, depth: int) -> Expr:
        if not self.is_punct("("):
            return self.comparison()
        if depth >= MAX_DEPTH:
            raise self.error(f"{self.what} is nested more than {MAX_DEPTH} parentheses deep")
        self.advance()
        expr = self.or_expr(depth + 1)
        if not self.is_punct(")"):
            raise self.found("')'" if self.tok.kind == "eof" else "AND, OR or ')'")
        self.advance()
        return expr

    def identifier(self) -> Identifier:
        tok = self.tok
        if tok.kind != "word" or tok.text.upper() in _KEYWORDS:
            raise self.found("an identifier such as metrics.loss, params.lr or status")
        self.advance()
        prefix, dot, key = tok.text.partition(".")
        kind = _kind(prefix)
        if not dot:
            if kind is not None:
                raise self.error(f"'{prefix}' needs a key: write {kind}.<key>", tok.pos)
            return Identifier("attributes", self.attribute(prefix, tok.pos), tok.pos)
        if kind is None:
            raise self.error(
                f"unknown prefix '{prefix}'; use params, metrics, tags or attributes", tok.pos
            )
        if not key:  # `params.` followed by a quoted key
            quoted = self.tok
            if quoted.kind not in ("backtick", "dquoted"):
                raise self.found(f"a key after '{tok.text}'")
            self.advance()
            key = str(quoted.value)
            if not key:
                raise self.error("empty key; write a name between the quotes", quoted.pos)
        if kind == "attributes":
            key = self.attribute(key, tok.pos)
        return Identifier(kind, key, tok.pos)

    def attribute(self, name: str, position: int) -> str:
        if name.lower() not in ATTRIBUTES:
            raise self.error(
                f"unknown attribute '{name}'; use one of {', '.join(ATTRIBUTES)} "
                f"or a prefix such as params.{name}",
                position,
            )
        return name.lower()

    def value(self, context: str) -> Scalar:
        tok = self.tok
        if tok.kind in ("string", "dquoted", "number"):
            self.advance()
            return tok.value
        if self.is_kw("TRUE", "FALSE"):
            self.advance()
            return tok.text.upper() == "TRUE"
        hint = ""
        if tok.kind == "word" and tok.text.upper() not in _KEYWORDS:
            hint = f"; quote text values: '{tok.text}'"
        raise self.error(f"expected a value {context} but found {self.describe(tok)}{hint}")

    def in_list(self) -> list[tuple[Scalar, _Token]]:
        if not self.is_punct("("):
            raise self.found("'(' after IN")
        self.advance()
        items: list[tuple[Scalar, _Token]] = []
        while not self.is_punct(")"):
            if len(items) >= MAX_IN_ITEMS:
                raise self.error(f"IN list has more than {MAX_IN_ITEMS} values")
            tok = self.tok
            items.append((self.value("in IN list"), tok))
            if self.is_punct(","):
                self.advance()
            elif not self.is_punct(")"):
                raise self.found("',' or ')' in IN list")
        if not items:
            raise self.error("empty IN list; give at least one value")
        self.advance()
        return items

    def comparison(self) -> Comparison:
        ident = self.identifier()
        op_tok = self.tok
        pos = op_tok.pos
        if op_tok.kind == "op":
            self.advance()
            op = "!=" if op_tok.text == "<>" else op_tok.text
            if op not in _COMPARE_OPS:
                raise self.error(f"unknown operator '{op_tok.text}'; {_OPS_HINT}", pos)
            value_tok = self.tok
            value = self.value(f"after '{op_tok.text}'")
            self.check_values(ident, op, [(value, value_tok)])
            return Comparison(ident, op, value, pos)
        negate = self.is_kw("NOT")
        if negate:
            self.advance()
            if not self.is_kw("IN", "LIKE", "ILIKE"):
                raise self.found("IN, LIKE or ILIKE after NOT")
        if self.is_kw("IN"):
            self.advance()
            items = self.in_list()
            op = "NOT IN" if negate else "IN"
            self.check_values(ident, op, items)
            return Comparison(ident, op, tuple(v for v, _ in items), pos)
        if self.is_kw("LIKE", "ILIKE"):
            keyword = self.advance().text.upper()
            op = f"NOT {keyword}" if negate else keyword
            category = _category(ident)
            if category != "string":
                what = "numeric" if category == "number" else "a timestamp"
                raise self.error(
                    f"{_display(ident)} is {what}; {keyword} only works on text "
                    "(params, tags, name, status)",
                    ident.position,
                )
            pattern = self.tok
            if pattern.kind not in ("string", "dquoted"):
                raise self.found(f"a quoted pattern after {keyword}")
            self.advance()
            return Comparison(ident, op, str(pattern.value), pos)
        if self.is_kw("IS"):
            self.advance()
            op = "IS NOT NULL" if self.is_kw("NOT") else "IS NULL"
            if op == "IS NOT NULL":
                self.advance()
            if not self.is_kw("NULL"):
                raise self.found("NULL after IS NOT" if op == "IS NOT NULL" else "NULL or NOT NULL")
            self.advance()
            return Comparison(ident, op, None, pos)
        raise self.found(f"an operator after {_display(ident)} ({_OPS_HINT}, IS)")

    def check_values(self, ident: Identifier, op: str, items: list[tuple[Scalar, _Token]]) -> None:
        """Reject literals the column type can never match, so users learn it at parse time."""
        name, category = _display(ident), _category(ident)
        for value, tok in items:
            if category == "string":
                if isinstance(value, str):
                    continue
                literal = repr(tok.text.lower())  # numbers and TRUE/FALSE: the quoted form
                example = f"({literal})" if op.endswith("IN") else literal
                raise self.error(f"{name} is a string: write {name} {op} {example}", ident.position)
            if isinstance(value, bool) or (category == "number" and isinstance(value, str)):
                what = "numeric" if category == "number" else "a timestamp"
                expected = "a number" if category == "number" else "a number or ISO-8601 date"
                fix = f"compare it with {expected}, not {tok.text}"
                if isinstance(value, str) and _NUMBER.fullmatch(value):
                    fix = f"remove the quotes around {tok.text}"
                raise self.error(f"{name} is {what}: {fix}", ident.position)
            if category == "time" and isinstance(value, str):
                try:
                    datetime.fromisoformat(value)
                except ValueError:
                    raise self.error(
                        f"invalid date {tok.text} for {name}; use ISO-8601 such as "
                        "'2024-01-31T12:00:00' or milliseconds since epoch",
                        tok.pos,
                    ) from None

    def at_end(self) -> bool:
        return self.tok.kind == "eof"


def parse_filter(text: str) -> Expr | None:
    """Parse a run-search filter; an empty or blank filter means "match all" (None)."""
    parser = _Parser(text, "filter")
    if parser.at_end():
        return None
    expr = parser.or_expr(0)
    if parser.is_punct(")"):
        raise parser.error("unexpected ')' without a matching '('")
    if not parser.at_end():
        raise parser.found("AND, OR or end of filter")
    return expr


def parse_order_by(text: str) -> OrderKey:
    """Parse one ``order_by`` term such as ``metrics.m1 DESC``; ascending by default."""
    parser = _Parser(text, "order_by")
    ident = parser.identifier()
    descending = False
    if parser.is_kw("ASC", "DESC"):
        descending = parser.advance().text.upper() == "DESC"
    if not parser.at_end():
        raise parser.found("ASC, DESC or end of order_by")
    return OrderKey(ident, descending)
