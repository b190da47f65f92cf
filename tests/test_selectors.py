"""The one selector language (edgefleet.selectors): the rollout forms are sugar of the FL
expressions, rollouts and participant selection read it alike, and every error is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.catalog import get_profile
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.rollouts.planning import parse_selector, selector_matches
from edgefleet.coordinator.state.model import DeviceRecord
from edgefleet.fl.contract import NodeFacts
from edgefleet.selectors import (
    ROLLOUT_FIELDS,
    AllOf,
    AnyOf,
    Compare,
    SelectionError,
    parse_selection,
)

PI = "dev-0123456789ab"
MCU = "dev-ba9876543210"


def record(device_id: str, profile: str, **labels: str) -> DeviceRecord:
    return DeviceRecord(
        id=device_id, name=device_id, profile=get_profile(profile), instance_key="k",
        credential_sha256="", registered_at=0.0, last_seen=0.0, labels=labels,
    )  # fmt: skip


RECORDS = [record(PI, "rpi4", site="lab"), record(MCU, "cortex-m4", site="field")]


@pytest.mark.parametrize(
    ("sugar", "expression"),
    [
        ("all", ""),
        ("profile:rpi4", "profile=rpi4"),
        ("rpi4", "profile==rpi4"),
        ("label:site=lab", "labels.site==lab"),
        ("label:site=lab", 'labels.site="lab"'),
        (f"device:{PI}", f"device=={PI}"),
        ("profile:rpi4,label:site=field", "profile=rpi4 or labels.site=field"),
        ("profile:rpi4, cortex-m4", "(profile==rpi4) or (profile==cortex-m4)"),
    ],
)
def test_rollout_forms_are_sugar_of_the_expressions(sugar: str, expression: str) -> None:
    a, b = parse_selection(sugar), parse_selection(expression)
    if expression:
        assert a.predicate == b.predicate  # the same typed predicate, not just the same answers
        assert str(a) == str(b)
    assert [selector_matches(a, r) for r in RECORDS] == [selector_matches(b, r) for r in RECORDS]


def test_the_predicate_is_typed_and_prints_canonically() -> None:
    s = parse_selection("ram>=512MiB and profile=rpi4, label:tier='beta x'")
    assert s.predicate == AnyOf(
        (
            AllOf((Compare("ram", ">=", 512 * 1024**2), Compare("profile", "==", "rpi4"))),
            Compare("labels.tier", "==", "beta x"),
        )
    )
    assert str(s) == '(ram>=536870912 and profile==rpi4) or labels.tier=="beta x"'
    assert parse_selection(str(s)).predicate == s.predicate  # the canonical form round-trips
    assert s.fields() == {"ram", "profile", "labels"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("all", [True, True]),
        ("profile:rpi4", [True, False]),
        ("label:site=field", [False, True]),
        (f"device:{MCU}", [False, True]),
        ("ram>=1GiB", [True, False]),  # the profile's RAM
        ("runtime=mcu-sim", [False, True]),  # any of the profile's runtimes
        ("runtime!=mcu-sim", [True, False]),
        ("not profile:rpi4 and labels.site!=lab", [False, True]),
        ("labels.missing!=x", [True, True]),
    ],
)
def test_deploy_to_takes_expressions(selector: str, expected: list[bool]) -> None:
    parsed = parse_selector(selector)
    assert [selector_matches(parsed, r) for r in RECORDS] == expected


def test_participant_selection_reads_the_same_language() -> None:
    pi = NodeFacts(device=PI, profile="rpi4", ram=4 * 1024**3, battery=80, labels={"site": "lab"})
    mcu = NodeFacts(device=MCU, profile="cortex-m4", ram=640 * 1024, battery=20)
    for selector, expected in [
        ("profile:rpi4", [True, False]),
        ("label:site=lab", [True, False]),
        (f"device:{MCU}", [False, True]),
        ("all", [True, True]),
        ("battery>30 and ram>=512MiB", [True, False]),
    ]:
        s = parse_selection(selector)
        assert [s.matches(n.selection_view()) for n in (pi, mcu)] == expected, selector


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("zone:eu", "bad term 'zone:eu' at 1"),
        ("label:site", "label terms are label:KEY=VALUE, got 'label:site' at 1"),
        ("profile:rpi4>3", "'profile:rpi4' at 1 is already a condition"),
        ("profile:rpi4,", "expected a condition"),
        ("all and batery>3", "unknown field 'batery' at 9"),
        ("battery 30", "expected a comparison"),
    ],
)
def test_errors_are_one_line(selector: str, message: str) -> None:
    with pytest.raises(SelectionError) as err:
        parse_selection(selector)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("", "required"),
        ("device:xyz", "malformed device id 'xyz'"),
        ("device==dev-1", "malformed device id 'dev-1'"),
        ("battery>30", "battery cannot be selected on here"),
        ("zone:eu", "bad term 'zone:eu'"),
    ],
)
def test_rollout_selector_errors(selector: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_selector(selector)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_rollouts_refuse_facts_only_devices_report() -> None:
    assert set(ROLLOUT_FIELDS) == {"device", "profile", "ram", "runtime", "labels"}
    with pytest.raises(SelectionError, match="health, width cannot be selected on here"):
        parse_selection("health=ok or width>0.5", ROLLOUT_FIELDS)


def test_cli_refuses_a_bad_to_or_deploy_before_anything_starts(tmp_path: Path) -> None:
    from edgefleet.cli.app import app
    from edgefleet.cli.train_cmds import train_app

    runner = CliRunner()
    res = runner.invoke(app, ["deploy", "digits", "--to", "label:site"])
    assert res.exit_code == 2
    assert "label terms are label:KEY=VALUE" in " ".join(res.output.split())
    res = runner.invoke(
        train_app,
        ["start", "mlp", "--local", "2", "--deploy", "battery>3", "--runs-dir", str(tmp_path)],
    )
    assert res.exit_code == 2
    assert "--deploy: battery cannot be selected on here" in " ".join(res.output.split())
    assert not any(tmp_path.iterdir())
