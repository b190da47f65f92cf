"""A build job's timeout (issue 18): ``models build --timeout DURATION`` and
``StartBuildRequest.timeout_seconds``, checked on both sides and carried into RQ's job.

The end-to-end case (a real worker stops a real build at its timeout; the job ends failed, once,
with one line naming the timeout, and nothing partial is listed) lives in
``tests/test_build_jobs.py``, which already runs a coordinator, a worker and a trained model:
starting them again here would cost more than the check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgefleet.cli.jobs_cmds import parse_duration
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.jobs import (
    DEFAULT_JOB_TIMEOUT,
    MAX_JOB_TIMEOUT,
    BuildRequest,
    JobQueue,
    validate_build,
)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400)]
)
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "0", "0.2s", "8d", "nan", "inf", "-5m"])
def test_bad_durations_are_one_line(text: str) -> None:
    with pytest.raises(typer.BadParameter) as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


def test_the_server_bounds_the_timeout() -> None:
    assert validate_build(BuildRequest("m", timeout=MAX_JOB_TIMEOUT)).timeout == MAX_JOB_TIMEOUT
    for bad in (-1, MAX_JOB_TIMEOUT + 1):
        with pytest.raises(InvalidArgument, match="timeout_seconds: must be 1 s to 7 days"):
            validate_build(BuildRequest("m", timeout=bad))
    # the timeout is not part of the build's identity: asked again, it follows the running job
    assert BuildRequest("m", ("fp16",), timeout=5).key() == BuildRequest("m", ("fp16",)).key()


def test_the_timeout_reaches_the_rq_job(redis_url: str) -> None:
    from rq.job import Job

    q = JobQueue.from_url(redis_url)
    short = q.start_build(BuildRequest("m", ("fp16",), 5, timeout=42))
    default = q.start_build(BuildRequest("m", ("int8-static",), 5))
    assert short.timeout == 42 and default.timeout == DEFAULT_JOB_TIMEOUT
    assert Job.fetch(short.id, connection=q.connection).timeout == 42
    assert q.get(default.id).timeout == DEFAULT_JOB_TIMEOUT


def test_the_cli_refuses_a_bad_timeout_before_anything_is_sent(tmp_path: Path) -> None:
    from edgefleet.cli.app import app

    runner = CliRunner()
    remote = {"EDGEFLEET_COORDINATOR": "127.0.0.1:1", "EDGEFLEET_ADMIN_TOKEN": "t"}
    for args, env, message in [
        (["--timeout", "2x"], remote, "--timeout '2x' is not a duration"),
        (["--timeout", "9d"], remote, "must be 1 s to 7 days"),
        (["--timeout", "5m", "--data-dir", str(tmp_path)], {}, "limits a build job"),
    ]:
        done = runner.invoke(app, ["models", "build", "m", *args], env=env)
        assert done.exit_code == 2 and message in done.stderr, done.output
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
