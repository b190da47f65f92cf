"""The one device-selector language: ``deploy --to``, ``train start --select`` and ``--deploy``.

A selector is parsed once (errors are one line naming the position and what was expected)
into a typed predicate (:class:`Predicate`) over a device's plain facts, e.g. ``{"device":
"dev-0123456789ab", "profile": "rpi4", "ram": 4 GiB, "battery": 80, "health": "ok",
"runtime": "onnxruntime", "labels": {"site": "lab"}}``. Rollouts (the coordinator's device
records) and federated participant selection (what each SuperNode reports) build those
facts; missing facts never match a number, and ``!=`` matches a missing text fact.

Grammar::

    expr   := or
    or     := and (("or" | ",") and)*
    and    := not ("and" not)*
    not    := "not" not | atom
    atom   := "(" expr ")" | FIELD OP VALUE | "all" | SUGAR
    FIELD  := ram | battery | profile | health | device | width | runtime | labels.KEY
    OP     := == | = | != | < | <= | > | >=
    VALUE  := number [unit] | word | "quoted"      units: KiB MiB GiB KB MB GB %

The rollout forms are sugar of it: ``all`` matches every device, ``profile:NAME`` (or a
bare ``NAME``) is ``profile==NAME``, ``label:KEY=VALUE`` is ``labels.KEY==VALUE``,
``device:ID`` is ``device==ID``, and a comma is ``or``; so ``profile:rpi4,label:site=lab``
and ``profile=rpi4 or labels.site=lab`` are one selector. A fact holding several values
(a profile's runtimes) matches ``==`` when any of them is equal.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIELDS",
    "ROLLOUT_FIELDS",
    "All",
    "AllOf",
    "AnyOf",
    "Compare",
    "Not",
    "Predicate",
    "Selection",
    "SelectionError",
    "parse_selection",
]

FIELDS = {
    "ram": "number",
    "battery": "number",
    "width": "number",
    "profile": "text",
    "health": "text",
    "device": "text",
    "runtime": "text",
}
#: the rollout forms ``KIND:VALUE`` and the field each one compares
SUGAR = {"profile": "profile", "device": "device", "label": "labels"}
UNITS = {
    "": 1, "%": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}  # fmt: skip
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|<=|>=|=|<|>)|(?P<paren>[()])|(?P<comma>,)"
    r"|(?P<str>\"[^\"]*\"|'[^']*')|(?P<word>[A-Za-z0-9_.%\-:/+]+))"
)
_KEYWORDS = ("and", "or", "not", "all")
EXAMPLES = "e.g. all, profile:rpi4, label:site=lab, 'ram>=512MiB and battery>30'"


class SelectionError(ValueError):
    """A selector that cannot be parsed; the message is one line saying where and why."""


# --- the typed predicate --------------------------------------------------------------------


class Predicate:
    """A parsed selector (or part of one): ``matches(facts)``; ``str()`` is its canonical form."""

    def matches(self, facts: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def conditions(self) -> Iterator[Compare]:
        """Every ``FIELD OP VALUE`` comparison in it (for callers that check fields/values)."""
        return iter(())


@dataclass(frozen=True)
class All(Predicate):
    """``all`` (and the empty selection): every device."""

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return True

    def __str__(self) -> str:
        return "all"


@dataclass(frozen=True)
class Compare(Predicate):
    """``FIELD OP VALUE``: a number (units applied) or text compared with a device's fact."""

    field: str  # a FIELDS name or labels.KEY
    op: str  # one of OPS ("=" is read as "==")
    value: float | str
    pos: int = dataclasses.field(default=0, compare=False)  # 1-based, in the selector's text

    def matches(self, facts: Mapping[str, Any]) -> bool:
        have = _fact(facts, self.field)
        op = OPS[self.op]
        if isinstance(self.value, float):
            try:
                return have is not None and op(float(have), self.value)
            except (TypeError, ValueError):
                return False
        if have is None:
            return self.op == "!="
        if isinstance(have, list | tuple | set | frozenset):  # several values: any equal
            return (self.value in {str(h) for h in have}) == (self.op == "==")
        return op(str(have), self.value)

    def conditions(self) -> Iterator[Compare]:
        yield self

    def __str__(self) -> str:
        if isinstance(self.value, float):
            number = int(self.value) if self.value.is_integer() else self.value
            return f"{self.field}{self.op}{number}"
        value = self.value
        if not re.fullmatch(r"[A-Za-z0-9_.%\-:/+]+", value):
            value = f"'{value}'" if '"' in value else f'"{value}"'
        return f"{self.field}{self.op}{value}"


@dataclass(frozen=True)
class Not(Predicate):
    inner: Predicate

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return not self.inner.matches(facts)

    def conditions(self) -> Iterator[Compare]:
        return self.inner.conditions()

    def __str__(self) -> str:
        return f"not {_grouped(self.inner)}"


@dataclass(frozen=True)
class AllOf(Predicate):
    parts: tuple[Predicate, ...]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return all(p.matches(facts) for p in self.parts)

    def conditions(self) -> Iterator[Compare]:
        for p in self.parts:
            yield from p.conditions()

    def __str__(self) -> str:
        return " and ".join(_grouped(p) for p in self.parts)


@dataclass(frozen=True)
class AnyOf(Predicate):
    parts: tuple[Predicate, ...]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        return any(p.matches(facts) for p in self.parts)

    def conditions(self) -> Iterator[Compare]:
        for p in self.parts:
            yield from p.conditions()

    def __str__(self) -> str:
        return " or ".join(_grouped(p) for p in self.parts)


def _grouped(p: Predicate) -> str:
    return f"({p})" if isinstance(p, AllOf | AnyOf) else str(p)


@dataclass(frozen=True)
class Selection:
    """A parsed selector: its text as given and the predicate it means."""

    text: str
    predicate: Predicate

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether a device with these facts is selected (missing facts never match a number)."""
        return self.predicate.matches(facts)

    def fields(self) -> set[str]:
        """The fields it compares (``labels.KEY`` as ``labels``)."""
        return {c.field.split(".", 1)[0] for c in self.predicate.conditions()}

    def __str__(self) -> str:
        return str(self.predicate)


#: what a rollout can select on (the coordinator's device records); battery, health and
#: width only devices report, to federated runs
ROLLOUT_FIELDS = ("device", "profile", "ram", "runtime", "labels")


def parse_selection(text: str | None, fields: tuple[str, ...] | None = None) -> Selection:
    """Parse ``text`` (empty or None selects every device); :class:`SelectionError` if bad.

    ``fields``: the only fields this use knows (``labels`` for every ``labels.KEY``), e.g.
    :data:`ROLLOUT_FIELDS`; others are refused rather than silently matching nothing.
    """
    if text is None or not text.strip():
        return Selection("", All())
    parsed = Selection(text, _Parser(text).parse())
    unknown = sorted(parsed.fields() - set(fields)) if fields is not None else []
    if unknown:
        allowed = ", ".join(f if f != "labels" else "labels.KEY" for f in fields or ())
        raise SelectionError(
            f"{', '.join(unknown)} cannot be selected on here (only devices report it, to "
            f"federated runs); use {allowed}"
        )
    return parsed


# --- parsing --------------------------------------------------------------------------------


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


def _fact(facts: Mapping[str, Any], name: str) -> Any:
    if name.startswith("labels."):
        labels = facts.get("labels") or {}
        return labels.get(name[len("labels.") :]) if isinstance(labels, Mapping) else None
    return facts.get(name)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def _peek(self, ahead: int = 0) -> _Tok | None:
        i = self.i + ahead
        return self.toks[i] if i < len(self.toks) else None

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
        parts = [self._and()]
        while True:
            tok = self._peek()
            if tok is not None and tok.kind == "comma":
                self.i += 1
            elif not self._keyword("or"):
                break
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def _and(self) -> Predicate:
        parts = [self._not()]
        while self._keyword("and"):
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def _not(self) -> Predicate:
        if self._keyword("not"):
            return Not(self._not())
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
        nxt = self._peek(1)
        followed_by_op = nxt is not None and nxt.kind == "op"
        word = tok.text.lower()
        if word == "all" and not followed_by_op:
            self.i += 1
            return All()
        kind, colon, rest = tok.text.partition(":")
        if colon:
            return self._sugar(tok, kind.lower(), rest, followed_by_op)
        bare = word not in FIELDS and word not in _KEYWORDS and not word.startswith("labels.")
        if bare and not followed_by_op:  # a bare NAME: profile:NAME
            self.i += 1
            return Compare("profile", "==", tok.text, tok.pos + 1)
        self._field(tok, word)
        self.i += 1
        return self._comparison(word)

    def _sugar(self, tok: _Tok, kind: str, rest: str, followed_by_op: bool) -> Predicate:
        """``profile:NAME``, ``device:ID``, ``label:KEY=VALUE`` (the rollout forms)."""
        if kind not in SUGAR or not rest:
            raise SelectionError(
                f"bad term {tok.text!r} at {tok.pos + 1} (use profile:NAME, label:KEY=VALUE, "
                "device:ID or FIELD OP VALUE)"
            )
        self.i += 1
        if kind == "label":
            if not followed_by_op:
                raise SelectionError(
                    f"label terms are label:KEY=VALUE, got {tok.text!r} at {tok.pos + 1}"
                )
            return self._comparison(f"labels.{rest}")
        if followed_by_op:
            raise SelectionError(
                f"{tok.text!r} at {tok.pos + 1} is already a condition: write {kind}:VALUE "
                f"or {kind}==VALUE"
            )
        return Compare(SUGAR[kind], "==", rest, tok.pos + 1)

    def _field(self, tok: _Tok, name: str) -> None:
        if name not in FIELDS and not (name.startswith("labels.") and len(name) > 7):
            known = ", ".join([*FIELDS, "labels.KEY"])
            raise SelectionError(f"unknown field {tok.text!r} at {tok.pos + 1} (known: {known})")

    def _comparison(self, name: str) -> Predicate:
        op_tok = self._peek()
        if op_tok is None or op_tok.kind != "op":
            raise SelectionError(f"expected a comparison (==, !=, <, <=, >, >=) {self._where()}")
        self.i += 1
        val_tok = self._peek()
        if val_tok is None or val_tok.kind not in ("word", "str"):
            raise SelectionError(f"expected a value after {op_tok.text!r} {self._where()}")
        self.i += 1
        op = "==" if op_tok.text == "=" else op_tok.text
        raw = val_tok.text[1:-1] if val_tok.kind == "str" else val_tok.text
        if FIELDS.get(name) == "number":
            value = _number(raw)
            if value is None:
                raise SelectionError(f"{name} needs a number, got {raw!r} at {val_tok.pos + 1}")
            return Compare(name, op, value, val_tok.pos + 1)
        if op not in ("==", "!="):
            raise SelectionError(f"{name} is text: only == and != apply (at {op_tok.pos + 1})")
        return Compare(name, op, raw, val_tok.pos + 1)
