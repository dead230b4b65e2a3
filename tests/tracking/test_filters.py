"""Tests for the run-search filter parser (app.tracking.filters)."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from app.tracking.filters import (
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_IN_ITEMS,
    BoolOp,
    Comparison,
    Expr,
    FilterSyntaxError,
    Identifier,
    OrderKey,
    parse_filter,
    parse_order_by,
)


def shape(expr: Expr | None) -> Any:
    """Position-free view of an AST so structural assertions stay readable."""
    if expr is None:
        return None
    if isinstance(expr, BoolOp):
        return (expr.op, [shape(operand) for operand in expr.operands])
    return (f"{expr.identifier.kind}.{expr.identifier.key}", expr.op, expr.value)


def comparison(text: str) -> Comparison:
    expr = parse_filter(text)
    assert isinstance(expr, Comparison)
    return expr


def error(text: str) -> FilterSyntaxError:
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    return info.value


# -- empty input and basic structure ---------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "  \t\n  "])
def test_empty_filter_matches_everything(text: str) -> None:
    assert parse_filter(text) is None


def test_single_comparison_with_positions() -> None:
    expr = parse_filter("metrics.loss < 0.5")
    assert expr == Comparison(Identifier("metrics", "loss", 0), "<", 0.5, 13)


def test_and_binds_tighter_than_or() -> None:
    expr = parse_filter("metrics.a > 1 OR metrics.b > 2 AND metrics.c > 3")
    assert shape(expr) == (
        "OR",
        [
            ("metrics.a", ">", 1),
            ("AND", [("metrics.b", ">", 2), ("metrics.c", ">", 3)]),
        ],
    )


def test_and_before_or_on_the_left_too() -> None:
    expr = parse_filter("metrics.a > 1 AND metrics.b > 2 OR metrics.c > 3")
    assert shape(expr) == (
        "OR",
        [("AND", [("metrics.a", ">", 1), ("metrics.b", ">", 2)]), ("metrics.c", ">", 3)],
    )


def test_parentheses_override_precedence() -> None:
    expr = parse_filter("(metrics.a > 1 OR metrics.b > 2) AND metrics.c > 3")
    assert shape(expr) == (
        "AND",
        [("OR", [("metrics.a", ">", 1), ("metrics.b", ">", 2)]), ("metrics.c", ">", 3)],
    )


def test_and_chain_is_flattened() -> None:
    expr = parse_filter("metrics.a = 1 AND metrics.b = 2 AND metrics.c = 3")
    assert isinstance(expr, BoolOp)
    assert expr.op == "AND"
    assert len(expr.operands) == 3
    assert all(isinstance(operand, Comparison) for operand in expr.operands)


def test_or_chain_is_flattened() -> None:
    expr = parse_filter("metrics.a = 1 OR metrics.b = 2 OR metrics.c = 3 OR metrics.d = 4")
    assert isinstance(expr, BoolOp)
    assert expr.op == "OR"
    assert len(expr.operands) == 4


def test_parenthesised_same_operator_is_flattened() -> None:
    expr = parse_filter("(metrics.a = 1 AND metrics.b = 2) AND (metrics.c = 3 AND metrics.d = 4)")
    assert shape(expr) == (
        "AND",
        [
            ("metrics.a", "=", 1),
            ("metrics.b", "=", 2),
            ("metrics.c", "=", 3),
            ("metrics.d", "=", 4),
        ],
    )


def test_redundant_parentheses_disappear() -> None:
    assert shape(parse_filter("((( metrics.a = 1 )))")) == ("metrics.a", "=", 1)


def test_nested_parentheses_keep_grouping() -> None:
    expr = parse_filter("params.a = 'x' AND (tags.b = 'y' OR (metrics.c > 1 AND metrics.d < 2))")
    assert shape(expr) == (
        "AND",
        [
            ("params.a", "=", "x"),
            (
                "OR",
                [("tags.b", "=", "y"), ("AND", [("metrics.c", ">", 1), ("metrics.d", "<", 2)])],
            ),
        ],
    )


def test_whitespace_is_optional_around_operators_and_parens() -> None:
    expr = parse_filter("(metrics.a>=1)AND(params.b!='x')")
    assert shape(expr) == ("AND", [("metrics.a", ">=", 1), ("params.b", "!=", "x")])


def test_nesting_up_to_the_limit_is_accepted() -> None:
    text = "(" * MAX_DEPTH + "metrics.a = 1" + ")" * MAX_DEPTH
    assert shape(parse_filter(text)) == ("metrics.a", "=", 1)


# -- operators ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["=", "!=", ">", ">=", "<", "<="])
def test_every_comparison_operator(op: str) -> None:
    expr = comparison(f"metrics.m {op} 2")
    assert expr.op == op
    assert expr.value == 2
    assert expr.position == 10


def test_angle_brackets_normalise_to_not_equal() -> None:
    assert comparison("params.opt <> 'sgd'").op == "!="


@pytest.mark.parametrize(
    ("text", "op", "value"),
    [
        ("params.opt LIKE 'ad%'", "LIKE", "ad%"),
        ("params.opt NOT LIKE 'ad%'", "NOT LIKE", "ad%"),
        ("tags.team ILIKE '%ML%'", "ILIKE", "%ML%"),
        ('tags.team NOT ILIKE "%ml%"', "NOT ILIKE", "%ml%"),
        ("name LIKE 'run-%'", "LIKE", "run-%"),
        ("status NOT ILIKE 'fail%'", "NOT ILIKE", "fail%"),
    ],
)
def test_like_operators(text: str, op: str, value: str) -> None:
    expr = comparison(text)
    assert (expr.op, expr.value) == (op, value)


def test_in_list_of_strings() -> None:
    expr = comparison("params.opt IN ('sgd', \"adam\", 'rmsprop')")
    assert (expr.op, expr.value) == ("IN", ("sgd", "adam", "rmsprop"))


def test_not_in_list_of_numbers() -> None:
    expr = comparison("metrics.epoch NOT IN (1, 2.5, -3)")
    assert (expr.op, expr.value) == ("NOT IN", (1, 2.5, -3))
    assert expr.position == 14  # where NOT starts


def test_in_list_allows_a_trailing_comma_and_single_item() -> None:
    assert comparison("params.a IN ('x',)").value == ("x",)
    assert comparison("id IN (7)").value == (7,)


def test_in_list_at_the_size_limit_is_accepted() -> None:
    values = ", ".join(str(i) for i in range(MAX_IN_ITEMS))
    expr = comparison(f"metrics.m IN ({values})")
    assert isinstance(expr.value, tuple)
    assert len(expr.value) == MAX_IN_ITEMS


def test_is_null_and_is_not_null() -> None:
    expr = comparison("metrics.loss IS NULL")
    assert (expr.op, expr.value, expr.position) == ("IS NULL", None, 13)
    expr = comparison("tags.note is not null")
    assert (expr.op, expr.value) == ("IS NOT NULL", None)
    assert comparison("end_time IS NULL").op == "IS NULL"


# -- values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("0.5", 0.5),
        ("-1.5e-3", -0.0015),
        ("1E3", 1000.0),
        (".25", 0.25),
        ("2.", 2.0),
    ],
)
def test_number_literals(literal: str, value: float) -> None:
    expr = comparison(f"metrics.m > {literal}")
    assert expr.value == value
    assert type(expr.value) is type(value)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'back\\slash'", "back\\slash"),
        (r"'mixed \"quotes\"'", 'mixed "quotes"'),
        ("'double \" inside single'", 'double " inside single'),
        (r"'50\%'", r"50\%"),  # unknown escapes are kept verbatim for LIKE patterns
        ("''", ""),
        ("'ünïcödé'", "ünïcödé"),
    ],
)
def test_string_literals_and_escapes(literal: str, value: str) -> None:
    assert comparison(f"params.p = {literal}").value == value


def test_double_quoted_token_is_a_value_in_value_position() -> None:
    expr = comparison('tags."team name" = "core ml"')
    assert expr.identifier == Identifier("tags", "team name", 0)
    assert expr.value == "core ml"


def test_true_false_parse_but_fail_the_type_check() -> None:
    err = error("metrics.ok = TRUE")
    assert err.position == 0
    assert "metrics.ok is numeric" in err.message
    assert "not TRUE" in err.message


# -- identifiers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "key"),
    [
        ("params.lr = '1'", "params", "lr"),
        ("param.lr = '1'", "params", "lr"),
        ("PARAMS.lr = '1'", "params", "lr"),
        ("metric.loss = 1", "metrics", "loss"),
        ("Metrics.loss = 1", "metrics", "loss"),
        ("tag.team = 'a'", "tags", "team"),
        ("TAGS.team = 'a'", "tags", "team"),
        ("attributes.status = 'a'", "attributes", "status"),
        ("attribute.status = 'a'", "attributes", "status"),
        ("attr.status = 'a'", "attributes", "status"),
        ("run.status = 'a'", "attributes", "status"),
        ("RUN.Status = 'a'", "attributes", "status"),
        ("status = 'a'", "attributes", "status"),
        ("STATUS = 'a'", "attributes", "status"),
    ],
)
def test_prefixes_are_case_insensitive_and_normalised(text: str, kind: str, key: str) -> None:
    ident = comparison(text).identifier
    assert (ident.kind, ident.key, ident.position) == (kind, key, 0)


@pytest.mark.parametrize(
    ("text", "kind", "key"),
    [
        ("metrics.val.loss < 1", "metrics", "val.loss"),
        ("tags.mlflow.source.name = 'x'", "tags", "mlflow.source.name"),
        ("params.a-b/c:d_e = 'x'", "params", "a-b/c:d_e"),
        ("params.0lead = 'x'", "params", "0lead"),
        ("params.`learning rate` = 'x'", "params", "learning rate"),
        ("params.\"learning rate\" = 'x'", "params", "learning rate"),
        ("metrics.`a b (c)` > 1", "metrics", "a b (c)"),
        ("tags.`it's` = 'x'", "tags", "it's"),
        ("params.`back\\slash` = 'x'", "params", "back\\slash"),
        ("params.and = 'x'", "params", "and"),
        ("attributes.`start_time` > 0", "attributes", "start_time"),
    ],
)
def test_key_quoting_and_dotted_keys(text: str, kind: str, key: str) -> None:
    ident = comparison(text).identifier
    assert (ident.kind, ident.key) == (kind, key)


@pytest.mark.parametrize(
    "attribute",
    ["id", "experiment_id", "duration_ms", "start_time", "end_time", "created_at"],
)
def test_numeric_and_time_attributes_take_numbers(attribute: str) -> None:
    assert comparison(f"{attribute} >= 1700000000000").value == 1700000000000


@pytest.mark.parametrize(
    "date",
    ["2024-01-31", "2024-01-31T12:00:00", "2024-01-31 12:00:00.123", "2024-01-31T12:00:00+02:00"],
)
def test_time_attributes_take_iso_dates(date: str) -> None:
    assert comparison(f"start_time > '{date}'").value == date


def test_identifier_and_operator_positions_in_a_compound_filter() -> None:
    expr = parse_filter("  metrics.a > 1 AND\n params.b = 'x'")
    assert isinstance(expr, BoolOp)
    first, second = expr.operands
    assert isinstance(first, Comparison)
    assert isinstance(second, Comparison)
    assert (first.identifier.position, first.position) == (2, 12)
    assert (second.identifier.position, second.position) == (21, 30)


def test_keywords_are_case_insensitive() -> None:
    text = "metrics.a > 1 and (params.b like 'x%' Or tags.c NoT iN ('y')) AND tags.d Is Not Null"
    assert shape(parse_filter(text)) == (
        "AND",
        [
            ("metrics.a", ">", 1),
            ("OR", [("params.b", "LIKE", "x%"), ("tags.c", "NOT IN", ("y",))]),
            ("tags.d", "IS NOT NULL", None),
        ],
    )


# -- ast objects -------------------------------------------------------------------------


def test_ast_nodes_are_frozen() -> None:
    expr = comparison("metrics.a = 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        expr.op = "!="  # type: ignore[misc]


# -- malformed filters: exact positions and messages --------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        # structure
        ("metrics.a > 1 AND", 17, "expected an identifier"),
        ("metrics.a > 1 AND", 17, "but found end of filter"),
        ("metrics.a > 1 OR ", 17, "expected an identifier"),
        ("AND metrics.a > 1", 0, "but found AND"),
        ("metrics.a > 1 AND AND metrics.b > 2", 18, "but found AND"),
        ("metrics.a >", 11, "expected a value after '>' but found end of filter"),
        ("metrics.m0 > AND metrics.m1 > 1", 13, "expected a value after '>' but found AND"),
        ("metrics.a = )", 12, "expected a value after '=' but found ')'"),
        ("(metrics.a > 1", 14, "expected ')' but found end of filter"),
        ("((metrics.a > 1)", 16, "expected ')' but found end of filter"),
        ("(metrics.a > 1 metrics.b > 2)", 15, "expected AND, OR or ')' but found 'metrics.b'"),
        ("metrics.a > 1)", 13, "unexpected ')'"),
        ("metrics.a > 1 metrics.b > 2", 14, "expected AND, OR or end of filter"),
        ("()", 1, "expected an identifier"),
        ("metrics.a 1", 10, "expected an operator after metrics.a"),
        ("metrics.a", 9, "expected an operator"),
        # lexical
        ("params.a = 'abc", 11, "unterminated string starting at position 11"),
        ('params.a = "abc', 11, "unterminated string"),
        ("params.a = 'ends with backslash\\", 11, "unterminated string"),
        ("params.`abc = 'x'", 7, "unterminated quoted key"),
        ("id # 1", 3, "unexpected character '#'"),
        ("metrics.a > - 1", 12, "unexpected character '-'"),
        ("metrics.a > 1abc", 12, "invalid number '1abc'"),
        ("metrics.a > 1.2.3", 12, "invalid number '1.2.3'"),
        ("metrics.a > 1e999", 12, "invalid number"),
        # operators
        ("metrics.a == 1", 10, "unknown operator '=='; use =, !=, <, <=, >, >=, LIKE, ILIKE, IN"),
        ("metrics.a => 1", 10, "unknown operator '=>'"),
        ("metrics.a ! 1", 10, "unknown operator '!'"),
        ("metrics.a NOT = 1", 14, "expected IN, LIKE or ILIKE after NOT"),
        ("metrics.a IS 1", 13, "expected NULL or NOT NULL"),
        ("metrics.a IS NOT 1", 17, "expected NULL after IS NOT"),
        ("params.a LIKE 5", 14, "expected a quoted pattern after LIKE"),
        ("params.a ILIKE", 14, "expected a quoted pattern after ILIKE but found end of filter"),
        # IN lists
        ("id IN ()", 7, "empty IN list"),
        ("params.a NOT IN ()", 17, "empty IN list"),
        ("params.a IN 'x'", 12, "expected '(' after IN"),
        ("params.a IN ('x' 'y')", 17, "expected ',' or ')' in IN list"),
        ("params.a IN ('x',,)", 17, "expected a value in IN list but found ','"),
        ("params.a IN ('x'", 16, "expected ',' or ')' in IN list but found end of filter"),
        # identifiers
        ("foo.bar = 1", 0, "unknown prefix 'foo'; use params, metrics, tags or attributes"),
        ("metrics.a > 1 AND foo.bar = 1", 18, "unknown prefix 'foo'"),
        ("colour = 'red'", 0, "unknown attribute 'colour'; use one of id"),
        ("attributes.colour = 'red'", 0, "unknown attribute 'colour'"),
        ("run.`lr` = 1", 0, "unknown attribute 'lr'"),
        ("metrics = 1", 0, "'metrics' needs a key: write metrics.<key>"),
        ("params. = 'x'", 8, "expected a key after 'params.'"),
        ("params.`` = 'x'", 7, "empty key"),
        ("'x' = params.a", 0, "expected an identifier such as metrics.loss"),
        ("status = FINISHED", 9, "quote text values: 'FINISHED'"),
        # types
        ("metrics.a = 'x'", 0, "metrics.a is numeric: compare it with a number"),
        ("metrics.a = '0.5'", 0, "metrics.a is numeric: remove the quotes around '0.5'"),
        ("metrics.a IN (1, 'x')", 0, "metrics.a is numeric"),
        ("metrics.a LIKE '%x'", 0, "metrics.a is numeric; LIKE only works on text"),
        ("metrics.a NOT ILIKE '%x'", 0, "metrics.a is numeric; ILIKE"),
        ("params.lr = 0.1", 0, "params.lr is a string: write params.lr = '0.1'"),
        ("params.lr IN (0.1, '1')", 0, "params.lr is a string: write params.lr IN ('0.1')"),
        ("tags.n != 3", 0, "tags.n is a string: write tags.n != '3'"),
        ("params.`a b` = 1", 0, "params.`a b` is a string"),
        ("params.flag = TRUE", 0, "params.flag is a string: write params.flag = 'true'"),
        ("id = '5'", 0, "id is numeric: remove the quotes around '5'"),
        ("experiment_id LIKE '1%'", 0, "experiment_id is numeric; LIKE"),
        ("name = 5", 0, "name is a string: write name = '5'"),
        ("status IN ('a', FALSE)", 0, "status is a string"),
        ("start_time LIKE '2024%'", 0, "start_time is a timestamp; LIKE"),
        ("created_at = TRUE", 0, "created_at is a timestamp: compare it with a number or ISO"),
        ("start_time > '2024-13-01'", 13, "invalid date '2024-13-01' for start_time"),
        ("metrics.a > 1 AND end_time < 'yesterday'", 29, "invalid date 'yesterday'"),
        ("created_at IN (1, '2024-02-30')", 18, "invalid date"),
    ],
)
def test_malformed_filters(text: str, position: int, fragment: str) -> None:
    err = error(text)
    assert err.position == position, str(err)
    assert fragment in str(err)
    assert err.text == text


def test_nesting_too_deep() -> None:
    text = "(" * (MAX_DEPTH + 1) + "metrics.a = 1" + ")" * (MAX_DEPTH + 1)
    err = error(text)
    assert err.position == MAX_DEPTH
    assert "nested more than 50" in err.message


def test_filter_too_long() -> None:
    text = "params.a = '" + "x" * MAX_FILTER_LENGTH + "'"
    err = error(text)
    assert err.position == MAX_FILTER_LENGTH
    assert "too long" in err.message


def test_in_list_too_long() -> None:
    values = ", ".join(str(i) for i in range(MAX_IN_ITEMS + 1))
    text = f"metrics.m IN ({values})"
    err = error(text)
    assert err.position == text.index(f" {MAX_IN_ITEMS})") + 1
    assert "more than 1000 values" in err.message


def test_error_message_format() -> None:
    err = error("metrics.m0 > AND metrics.m1 > 1")
    assert err.message == "expected a value after '>' but found AND"
    assert str(err) == (
        "expected a value after '>' but found AND at position 13: metrics.m0 > AND metrics.m1 > 1"
    )
    assert isinstance(err, ValueError)


def test_error_excerpt_is_trimmed_around_the_position() -> None:
    text = "params.a = 'x' AND " * 10 + "metrics.b == 1"
    err = error(text)
    assert err.position == text.index("==")
    excerpt = str(err).split(": ", 1)[1]
    assert excerpt.startswith("...")
    assert "metrics.b == 1" in excerpt
    assert len(excerpt) < 80


def test_error_excerpt_is_one_line() -> None:
    err = error("metrics.a > 1\nAND\n")
    assert "\n" not in str(err)
    assert err.position == 18


def test_error_survives_pickling() -> None:
    err = error("metrics.a == 1")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.position, copy.text) == (err.message, err.position, err.text)
    assert str(copy) == str(err)


# -- order_by ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics.m1 DESC", OrderKey(Identifier("metrics", "m1", 0), descending=True)),
        ("metrics.m1 desc", OrderKey(Identifier("metrics", "m1", 0), descending=True)),
        ("start_time", OrderKey(Identifier("attributes", "start_time", 0), descending=False)),
        ("params.`a b` asc", OrderKey(Identifier("params", "a b", 0), descending=False)),
        ('  tags."x y"  ASC ', OrderKey(Identifier("tags", "x y", 2), descending=False)),
        ("run.Name", OrderKey(Identifier("attributes", "name", 0), descending=False)),
        ("metrics.val.loss", OrderKey(Identifier("metrics", "val.loss", 0), descending=False)),
    ],
)
def test_order_by(text: str, expected: OrderKey) -> None:
    assert parse_order_by(text) == expected


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "expected an identifier such as metrics.loss, params.lr or status"),
        ("   ", 3, "but found end of order_by"),
        ("DESC", 0, "unknown attribute 'DESC'"),
        ("metrics.m1 DESC extra", 16, "expected ASC, DESC or end of order_by but found 'extra'"),
        ("metrics.m1 sideways", 11, "expected ASC, DESC or end of order_by"),
        ("metrics.m1, metrics.m2", 10, "but found ','"),
        ("foo.m1 DESC", 0, "unknown prefix 'foo'"),
        ("colour", 0, "unknown attribute 'colour'"),
        ("params.`open", 7, "unterminated quoted key"),
    ],
)
def test_malformed_order_by(text: str, position: int, fragment: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse_order_by(text)
    assert info.value.position == position, str(info.value)
    assert fragment in str(info.value)
