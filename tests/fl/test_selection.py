"""Selection expressions: what they match, and that bad ones fail with a clear message."""

from __future__ import annotations

import pytest

from edgefleet.selectors import SelectionError, parse_selection

RPI = {"profile": "rpi4", "ram": 4 * 1024**3, "battery": 80, "health": "ok", "labels": {}}
M4 = {"profile": "cortex-m4", "ram": 640 * 1024, "battery": 60, "health": "ok", "labels": {}}
PHONE = {
    "profile": "phone-budget", "ram": 4 * 1024**3, "battery": 20, "health": "degraded",
    "labels": {"site": "lab a", "tier": "beta"},
}  # fmt: skip


def test_the_issue_example() -> None:
    s = parse_selection("battery>30 and ram>=512MiB and profile!=cortex-m4")
    assert [s.matches(d) for d in (RPI, M4, PHONE)] == [True, False, False]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("ram < 1MiB", [False, True, False]),
        ("ram>=4GiB", [True, False, True]),
        ("ram>4GB", [True, False, True]),  # decimal units: 4 GB < 4 GiB
        ("battery<=20 or profile==rpi4", [True, False, True]),
        ("not health==ok", [False, False, True]),
        ("labels.site=='lab a'", [False, False, True]),
        ('labels.tier="beta" and (battery>10 or ram<1KiB)', [False, False, True]),
        ("labels.missing!=x", [True, True, True]),
        ("PROFILE = rpi4 AND battery > 50%", [True, False, False]),
        ("", [True, True, True]),
    ],
)
def test_matches(expr: str, expected: list[bool]) -> None:
    s = parse_selection(expr)
    assert [s.matches(d) for d in (RPI, M4, PHONE)] == expected


def test_missing_fact_never_matches_a_number() -> None:
    assert not parse_selection("battery>0").matches({"profile": "x"})


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("batery>30", "unknown field 'batery' at 1"),
        ("battery>", "expected a value after '>' at the end"),
        ("battery>>3", "expected a value after '>' at 9"),
        ("battery 30", "expected a comparison"),
        ("ram>=5XB", "unknown unit 'XB'"),
        ("battery>lots", "battery needs a number, got 'lots'"),
        ("profile<rpi4", "profile is text: only == and != apply"),
        ("battery>30 and", "expected a condition"),
        ("(battery>30", "expected ')'"),
        ("battery>30 ram>1", "expected 'and', 'or' or the end at 12"),
        ("battery>30 & ram>1", "unexpected character '&'"),
        ("   ", None),
    ],
)
def test_bad_expressions_fail_clearly(expr: str, message: str | None) -> None:
    if message is None:  # blank means "everyone", not an error
        assert parse_selection(expr).matches(RPI)
        return
    with pytest.raises(SelectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_selection(expr)
