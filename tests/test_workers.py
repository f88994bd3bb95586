"""``serve --workers``: a number, or ``auto`` (the default) = one worker per usable core, but one while limits are
counted in the process (issue 13 item 4). The speed-up itself is measured in bench/ (``run.py perf2``)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from modelgate.auth import ApiKey, KeyRing, key_digest
from modelgate.budget_rules import Budget
from modelgate.catalogue import load_catalogue
from modelgate.settings import Settings
from modelgate.workers import AUTO, cgroup_cpu_limit, in_process_limits, max_workers, parse, resolve, usable_cores
from tests.catalogue_files import model_toml, write_catalogue
from tests.cli_process import run_cli, serve_subprocess, wait_for

CORES = len(os.sched_getaffinity(0))


def test_auto_is_one_worker_per_usable_core() -> None:
    expected = min(CORES, cgroup_cpu_limit() or CORES)
    assert usable_cores() == expected
    assert resolve(AUTO, in_process_limits=False) == (expected, None)


@pytest.mark.parametrize(
    ("cpu_max", "limit"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("junk", None)]
)
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path: Path, cpu_max: str, limit: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n", encoding="ascii")
    assert cgroup_cpu_limit(path) == limit
    assert usable_cores(path) == (min(CORES, limit) if limit else CORES)
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_a_number_is_taken_as_given_even_with_in_process_limits() -> None:
    count, why = resolve(parse("3"), in_process_limits=True)
    assert count == 3
    # Found from outside: only ``auto`` said so; an explicit N multiplied the limits in silence.
    assert why is not None and "up to 3 times as much" in why and "MODELGATE_REDIS_URL" in why
    assert resolve(parse("3"), in_process_limits=False) == (3, None)
    assert resolve(parse("1"), in_process_limits=True) == (1, None)


@pytest.mark.skipif(usable_cores() < 2, reason="needs a machine with two usable cores")
def test_auto_keeps_one_worker_while_limits_are_counted_in_the_process() -> None:
    count, why = resolve(AUTO, in_process_limits=True)
    assert count == 1
    assert why is not None and "MODELGATE_REDIS_URL" in why


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_bad_values_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="--workers must be a positive number or 'auto'"):
        parse(value)


def test_serve_refuses_a_bad_workers_value_with_one_line() -> None:
    done = run_cli("serve", "--port", "0", "--workers", "many")
    assert done.returncode == 1
    assert done.stderr.strip() == "--workers must be a positive number or 'auto', not 'many'"


def test_more_workers_than_the_machine_can_run_are_refused_before_any_fork() -> None:
    """Found from outside: ``--workers 100000`` was taken as given and forked until the machine stopped answering."""
    most = max_workers()
    assert most == max(8, 4 * usable_cores())
    assert parse(str(most)) == most
    with pytest.raises(ValueError, match=f"--workers {most + 1}: at most {most}"):
        parse(str(most + 1))
    done = run_cli("serve", "--port", "0", "--workers", "100000")
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"--workers 100000: at most {most} (4 per usable CPU core")


def _key(**limits: int) -> ApiKey:
    return ApiKey(digest=key_digest("sk-test-0123456789abcdef"), name="k", **limits)


def test_which_configurations_count_in_the_process(tmp_path: Path) -> None:
    plain = load_catalogue(None)
    assert not in_process_limits(Settings(), plain, KeyRing())
    assert not in_process_limits(Settings(), plain, KeyRing((_key(),)))
    assert in_process_limits(Settings(), plain, KeyRing((_key(requests_per_minute=5),)))
    assert in_process_limits(Settings(), plain, KeyRing((_key(concurrent_streams=2),)))
    shared = Settings(redis_url="redis://127.0.0.1:1/0")  # counted in Redis: workers share the counters
    assert not in_process_limits(shared, plain, KeyRing((_key(concurrent_streams=2),)))
    capped = load_catalogue(write_catalogue(tmp_path / "c.toml", model_toml(extra="max_concurrency = 2\n")))
    assert in_process_limits(Settings(), capped, KeyRing())


def test_a_budget_without_redis_counts_in_the_process() -> None:
    # Its counters live beside the limits' (MemoryCounters): each worker would let the key spend its budget again.
    budgeted = ApiKey(digest=key_digest("sk-test-0123456789abcdef"), name="k", budget=Budget(tokens_per_day=1000))
    plain = load_catalogue(None)
    assert in_process_limits(Settings(), plain, KeyRing((budgeted,)))
    assert not in_process_limits(Settings(redis_url="redis://127.0.0.1:1/0"), plain, KeyRing((budgeted,)))


@pytest.mark.skipif(usable_cores() < 2, reason="needs a machine with two usable cores")
def test_serve_defaults_to_a_worker_per_core(tmp_path: Path) -> None:
    with serve_subprocess(["--workers", "auto"], tmp_path) as served:
        # The supervisor listens before its workers serve: wait for every worker's start line, then ask.
        workers = usable_cores()
        wait_for(lambda: served.log().count("Application startup complete") >= workers or None, "the workers", 120)
        assert httpx.get(f"{served.url}/ready", timeout=10).status_code == 200
        log = served.log()
    assert "Started parent process" in log  # uvicorn's supervisor: more than one worker
    assert log.count("Application startup complete") == usable_cores()


def test_auto_is_the_default() -> None:
    from typer.testing import CliRunner

    from modelgate.cli import cli

    serve_help = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).stdout
    assert "[default: auto]" in serve_help
