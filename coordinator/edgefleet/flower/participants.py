"""Participant-selection expressions: ``battery>30 and ram>=512MiB and profile!=cortex-m4``.

Flower samples nodes uniformly; a fleet needs to pick devices by what they can do and how
they are doing. An expression is parsed once (errors name the position and what was
expected) into a predicate over a device's facts, e.g. ``{"profile": "rpi4", "ram": 4 GiB,
"battery": 80, "health": "ok", "labels": {"site": "lab"}}``.

Grammar::

    expr   := or
    or     := and ("or" and)*
    and    := not ("and" not)*
    not    := "not" not | atom
    atom   := "(" expr ")" | FIELD OP VALUE
    FIELD  := ram | battery | profile | health | device | width | runtime | labels.KEY
    OP     := == | = | != | < | <= | > | >=
    VALUE  := number [unit] | word | "quoted"      units: KiB MiB GiB KB MB GB %
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELDS", "Selection", "SelectionError", "parse_selection"]

FIELDS = {
    "ram": "number",
    "battery": "number",
    "width": "number",
    "profile": "text",
    "health": "text",
    "device": "text",
    "runtime": "text",
}
UNITS = {
    "": 1, "%": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}  # fmt: skip
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "=": operator.eq, "!=": operator.ne,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|<=|>=|=|<|>)|(?P<paren>[()])|(?P<str>\"[^\"]*\"|'[^']*')"
    r"|(?P<word>[A-Za-z0-9_.%\-:/+]+))"
)

Predicate = Callable[[Mapping[str, Any]], bool]


class SelectionError(ValueError):
    """A selection expression that cannot be parsed (the message says where and why)."""


@dataclass(frozen=True)
class Selection:
    """A parsed expression: call :meth:`matches` on a device's facts."""

    text: str
    predicate: Predicate

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether a device with these facts is eligible (missing facts never match)."""
        return self.predicate(facts)


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectionError(f"unexpected character {text[pos:].strip()[0]!r} at {pos + 1}")
        kind = m.lastgroup or ""
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _number(text: str) -> float | None:
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*([A-Za-z%]*)", text)
    if not m:
        return None
    unit = m.group(2).lower()
    if unit not in UNITS:
        raise SelectionError(
            f"unknown unit {m.group(2)!r} in {text!r} (use KiB, MiB, GiB, KB, MB, GB, %)"
        )
    return float(m.group(1)) * UNITS[unit]


def _fact(facts: Mapping[str, Any], field: str) -> Any:
    if field.startswith("labels."):
        labels = facts.get("labels") or {}
        return labels.get(field[len("labels.") :]) if isinstance(labels, Mapping) else None
    return facts.get(field)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def _peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _where(self) -> str:
        tok = self._peek()
        return f"at {tok.pos + 1} ({tok.text!r})" if tok else "at the end"

    def _keyword(self, word: str) -> bool:
        tok = self._peek()
        if tok and tok.kind == "word" and tok.text.lower() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> Predicate:
        if not self.toks:
            raise SelectionError("empty selection expression")
        pred = self._or()
        if self._peek() is not None:
            raise SelectionError(f"expected 'and', 'or' or the end {self._where()}")
        return pred

    def _or(self) -> Predicate:
        preds = [self._and()]
        while self._keyword("or"):
            preds.append(self._and())
        return preds[0] if len(preds) == 1 else (lambda f: any(p(f) for p in preds))

    def _and(self) -> Predicate:
        preds = [self._not()]
        while self._keyword("and"):
            preds.append(self._not())
        return preds[0] if len(preds) == 1 else (lambda f: all(p(f) for p in preds))

    def _not(self) -> Predicate:
        if self._keyword("not"):
            inner = self._not()
            return lambda f: not inner(f)
        return self._atom()

    def _atom(self) -> Predicate:
        tok = self._peek()
        if tok is None:
            raise SelectionError("expected a condition like 'battery>30' at the end")
        if tok.kind == "paren" and tok.text == "(":
            self.i += 1
            inner = self._or()
            close = self._peek()
            if close is None or close.text != ")":
                raise SelectionError(f"expected ')' {self._where()}")
            self.i += 1
            return inner
        if tok.kind != "word":
            raise SelectionError(f"expected a field name {self._where()}")
        field = tok.text.lower()
        if field not in FIELDS and not (field.startswith("labels.") and len(field) > 7):
            known = ", ".join([*FIELDS, "labels.KEY"])
            raise SelectionError(f"unknown field {tok.text!r} at {tok.pos + 1} (known: {known})")
        self.i += 1
        op_tok = self._peek()
        if op_tok is None or op_tok.kind != "op":
            raise SelectionError(f"expected a comparison (==, !=, <, <=, >, >=) {self._where()}")
        self.i += 1
        val_tok = self._peek()
        if val_tok is None or val_tok.kind not in ("word", "str"):
            raise SelectionError(f"expected a value after {op_tok.text!r} {self._where()}")
        self.i += 1
        return self._compare(field, op_tok, val_tok)

    def _compare(self, field: str, op_tok: _Tok, val_tok: _Tok) -> Predicate:
        op = OPS[op_tok.text]
        raw = val_tok.text[1:-1] if val_tok.kind == "str" else val_tok.text
        if FIELDS.get(field) == "number":
            value = _number(raw)
            if value is None:
                raise SelectionError(f"{field} needs a number, got {raw!r} at {val_tok.pos + 1}")

            def num_pred(facts: Mapping[str, Any]) -> bool:
                have = _fact(facts, field)
                try:
                    return have is not None and op(float(have), value)
                except (TypeError, ValueError):
                    return False

            return num_pred
        if op_tok.text not in ("==", "=", "!="):
            raise SelectionError(f"{field} is text: only == and != apply (at {op_tok.pos + 1})")

        def text_pred(facts: Mapping[str, Any]) -> bool:
            have = _fact(facts, field)
            if have is None:
                return op_tok.text == "!="
            return op(str(have), raw)

        return text_pred


def parse_selection(text: str | None) -> Selection:
    """Parse ``text`` (empty or None selects every device)."""
    if text is None or not text.strip():
        return Selection("", lambda _facts: True)
    return Selection(text, _Parser(text).parse())
