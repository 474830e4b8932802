"""Structured filters ({field, op, value}) turned into a parameterised DuckDB condition: never raw SQL."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import FilterError
from pipeline.store import quote

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "contains")
_COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
MAX_IN_VALUES = 1000
MAX_CONDITIONS = 64
_INT_BITS = {
    "TINYINT": (8, True),
    "SMALLINT": (16, True),
    "INTEGER": (32, True),
    "BIGINT": (64, True),
    "HUGEINT": (128, True),
    "UTINYINT": (8, False),
    "USMALLINT": (16, False),
    "UINTEGER": (32, False),
    "UBIGINT": (64, False),
    "UHUGEINT": (128, False),
}
_FLOATS = ("FLOAT", "DOUBLE", "REAL")
_STRINGS = ("VARCHAR", "TEXT", "STRING")


class FilterValidationError(FilterError):
    """A structured filter that names an unknown field or operator, or has a value of the wrong type."""

    def __init__(self, message: str, code: str = "invalid_filter") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Condition:
    """One condition: `field op value`; `in` takes a list, `contains` a substring or a list element."""

    field: str
    op: str
    value: Any = None

    @classmethod
    def of(cls, item: Condition | Mapping[str, Any]) -> Condition:
        if isinstance(item, Condition):
            return item
        if not isinstance(item, Mapping) or not {"field", "op"} <= set(item):
            raise FilterValidationError("a filter condition is an object with field, op and value")
        return cls(str(item["field"]), str(item["op"]), item.get("value"))


def compile_filter(
    conditions: Sequence[Condition | Mapping[str, Any]] | None, column_types: Mapping[str, str]
) -> tuple[str | None, list[Any]]:
    """The conditions AND-ed as one SQL condition with `?` placeholders, and the values to bind.

    `column_types` maps the filterable columns to their DuckDB type names; a field outside it, an
    unknown operator or a value that does not fit the column's type raises FilterValidationError.
    """
    if not conditions:
        return None, []
    if len(conditions) > MAX_CONDITIONS:
        raise FilterValidationError(f"at most {MAX_CONDITIONS} filter conditions")
    parts: list[str] = []
    params: list[Any] = []
    for item in conditions:
        cond = Condition.of(item)
        sql, values = _compile_one(cond, column_types)
        parts.append(sql)
        params.extend(values)
    return " AND ".join(parts), params


def _compile_one(cond: Condition, column_types: Mapping[str, str]) -> tuple[str, list[Any]]:
    if cond.field not in column_types:
        known = ", ".join(sorted(column_types)) or "none"
        raise FilterValidationError(f"unknown filter field {cond.field!r}; filterable fields: {known}", "unknown_field")
    if cond.op not in OPS:
        raise FilterValidationError(
            f"unknown filter operator {cond.op!r}; use one of: {', '.join(OPS)}", "unknown_operator"
        )
    column = quote(cond.field)
    ctype = column_types[cond.field].upper()
    if cond.op in ("eq", "ne") and cond.value is None:
        return f"{column} IS {'NOT ' if cond.op == 'ne' else ''}NULL", []
    if ctype.endswith("]") and cond.op != "contains":
        raise _bad(cond, f"{cond.field} is a list; use contains (or eq/ne null)")
    if cond.op in _COMPARE:
        if _kind(ctype) == "bool" and cond.op not in ("eq", "ne"):
            raise _bad(cond, f"{cond.field} is a boolean; use eq or ne")
        return f"{column} {_COMPARE[cond.op]} ?", [_coerce(cond, ctype, cond.value)]
    if cond.op == "in":
        if not isinstance(cond.value, list) or not cond.value:
            raise _bad(cond, "'in' takes a non-empty list of values")
        if len(cond.value) > MAX_IN_VALUES:
            raise _bad(cond, f"'in' takes at most {MAX_IN_VALUES} values")
        values = [_coerce(cond, ctype, v) for v in cond.value]
        return f"{column} IN ({', '.join('?' for _ in values)})", values
    # contains: a substring of a text column, or an element of a list column.
    if ctype.endswith("[]"):
        return f"list_contains({column}, ?)", [_coerce(cond, ctype[:-2], cond.value)]
    if _kind(ctype) != "string":
        raise _bad(cond, f"'contains' applies to text and list fields; {cond.field} is {column_types[cond.field]}")
    return f"contains({column}, ?)", [_coerce(cond, ctype, cond.value)]


def _kind(ctype: str) -> str:
    base = ctype.split("(")[0].strip()
    if base in _INT_BITS:
        return "int"
    if base in _FLOATS or base == "DECIMAL":
        return "float"
    if base in _STRINGS or base.startswith("VARCHAR"):
        return "string"
    if base in ("BOOLEAN", "BOOL"):
        return "bool"
    if base == "DATE":
        return "date"
    if base.startswith("TIMESTAMP"):
        return "timestamp"
    return "other"


def _coerce(cond: Condition, ctype: str, value: Any) -> Any:
    """The value to bind, if it fits the column's type; JSON gives no dates, so they come as ISO strings."""
    kind = _kind(ctype)
    base = ctype.split("(")[0].strip()
    if value is None:
        raise _bad(cond, "null compares only with eq (IS NULL) and ne (IS NOT NULL)")
    if isinstance(value, (list, dict)):
        raise _bad(cond, f"{cond.field} takes a single {kind} value here, not a {type(value).__name__}")
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(cond, f"{cond.field} is {ctype}; the value must be an integer")
        bits, signed = _INT_BITS[base]
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if not low <= value <= high:
            raise _bad(cond, f"{value} is out of range for {cond.field} ({ctype})")
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _bad(cond, f"{cond.field} is {ctype}; the value must be a number")
        if isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
            # DuckDB binds a Python int as an integer of at most 128 bits; as a double it compares the same
            try:
                value = float(value)
            except OverflowError:
                raise _bad(cond, "the value is beyond the range of a number") from None
        if not math.isfinite(value):
            raise _bad(cond, "the value must be a finite number")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise _bad(cond, f"{cond.field} is {ctype}; the value must be a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(cond, f"{cond.field} is BOOLEAN; the value must be true or false")
        return value
    if kind in ("date", "timestamp"):
        if not isinstance(value, str):
            raise _bad(cond, f"{cond.field} is {ctype}; the value must be an ISO 8601 string")
        try:
            if kind == "date":
                return dt.date.fromisoformat(value)
            parsed = dt.datetime.fromisoformat(re.sub(r"Z$", "+00:00", value))
            if "TIME ZONE" in ctype or parsed.tzinfo is None:
                return parsed
            # a TIMESTAMP column holds UTC wall-clock times (as "Z" is read): move the offset in, then drop it
            return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        except ValueError:
            raise _bad(cond, f"{value!r} is not an ISO 8601 {kind}") from None
        except OverflowError:
            raise _bad(cond, f"{value!r} is out of range in UTC") from None
    raise _bad(cond, f"{cond.field} has type {ctype}, which structured filters do not support")


def _bad(cond: Condition, message: str) -> FilterValidationError:
    return FilterValidationError(f"filter on {cond.field!r} ({cond.op}): {message}", "invalid_filter_value")
