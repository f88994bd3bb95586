"""Start-up (issue 13 item 5): wall time of ``modelgate --help`` and ``modelgate models``, and the time from
exec of ``modelgate serve`` to its first ``GET /ready`` 200, for this tree and the previous release.

Every command runs with its venv's console script (the way a user runs it), the file-system cache warm (one
untimed run first); ``--help`` and ``models`` pinned to the server core, ``serve`` to both cores (its default
starts a worker per core). ``serve`` is polled every 2 ms from the load core with a plain
HTTP request, so the figure's resolution is ~2 ms. ``python -X importtime`` of what each path imports is kept
too (the heaviest modules, cumulative), to say where the time goes.

Each system's ``modelgate`` package is byte-compiled first, as ``pip install`` does: an editable tree run with
``PYTHONDONTWRITEBYTECODE=1`` (as this machine sets) otherwise compiles every module from source on each start
(~0.1-0.3 s), which an installed release never pays.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import ALL_CORES, SERVER_CORE, free_port, pinned
from systems import clean_env

COMMANDS = {"--help": ["--help"], "models": ["models"]}
#: ``serve`` as shipped (``--workers auto`` in this tree: one worker per core; 1 in the previous release) and
#: with one worker (no supervisor, no worker processes to start).
SERVE = {"serve": [], "serve --workers 1": ["--workers", "1"]}


def _env(results: Path) -> dict[str, str]:
    # No usage ledger file in the user's state directory; everything else as shipped.
    return clean_env() | {"MODELGATE_DATABASE_URL": f"sqlite:///{results.resolve()}/usage-startup.sqlite3"}


def compile_package(bin_dir: Path) -> None:
    """Write the ``.pyc`` of the installed (or editable) ``modelgate`` package, as ``pip install`` does."""
    code = "import compileall, os, modelgate; compileall.compile_dir(os.path.dirname(modelgate.__file__), quiet=1)"
    subprocess.run([str(bin_dir / "python"), "-c", code], check=True, timeout=120)


def time_command(bin_dir: Path, args: list[str], *, repeats: int, env: dict[str, str]) -> list[float]:
    argv = pinned(SERVER_CORE, [str(bin_dir / "modelgate"), *args])
    subprocess.run(argv, capture_output=True, check=True, env=env, timeout=60)  # warm the page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, env=env, timeout=60)
        times.append(time.perf_counter() - t0)
    return times


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def time_serve(bin_dir: Path, args: list[str], *, repeats: int, env: dict[str, str], log: Path) -> list[float]:
    """Exec → first ``/ready`` 200, on every core: ``--workers auto`` may use them all, as it would in service."""
    times = []
    for _ in range(repeats):
        port = free_port()
        # Both cores explicitly: the orchestrator's own affinity (the load core) would be inherited otherwise.
        argv = pinned(ALL_CORES, [str(bin_dir / "modelgate"), "serve", "--port", str(port), *args])
        with log.open("ab") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                while not _ready(port):
                    if proc.poll() is not None:
                        raise RuntimeError(f"modelgate serve exited ({proc.returncode}); see {log}")
                    if time.perf_counter() - t0 > 60:
                        raise RuntimeError(f"modelgate serve not ready after 60 s; see {log}")
                    time.sleep(0.002)
                times.append(time.perf_counter() - t0)
            finally:
                proc.terminate()
                proc.wait(30)
    return times


def importtime(bin_dir: Path, module: str, top: int = 12) -> list[tuple[str, float]]:
    """The ``top`` modules with the largest cumulative import time (ms) when importing ``module``."""
    python = bin_dir / "python"
    done = subprocess.run(
        pinned(SERVER_CORE, [str(python), "-X", "importtime", "-c", f"import {module}"]),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit():
            rows.append((name, int(cumulative) / 1000))
    return sorted(rows, key=lambda row: -row[1])[:top]


def run(results: Path, *, systems: dict[str, Path], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"repeats": repeats, "systems": {}}
    env = _env(results)
    for label, bin_dir in systems.items():
        compile_package(bin_dir)
        figures: dict[str, Any] = {}
        for name, args in COMMANDS.items():
            figures[name] = time_command(bin_dir, args, repeats=repeats, env=env)
        for name, args in SERVE.items():
            log = results / "startup-serve.log"
            figures[name] = time_serve(bin_dir, args, repeats=max(3, repeats // 2), env=env, log=log)
        figures["importtime"] = {m: importtime(bin_dir, m) for m in ("modelgate.cli", "modelgate.app")}
        out["systems"][label] = figures
        print(
            f"  startup {label:16} --help {statistics.median(figures['--help']) * 1000:6.0f} ms  "
            f"models {statistics.median(figures['models']) * 1000:6.0f} ms  "
            f"serve→/ready {statistics.median(figures['serve']) * 1000:6.0f} ms "
            f"(--workers 1: {statistics.median(figures['serve --workers 1']) * 1000:.0f} ms)",
            flush=True,
        )
    return out


if __name__ == "__main__":  # a quick look: python bench/startup_bench.py [bin_dir]
    here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin"
    print(run(Path("/tmp"), systems={"this tree": here}, repeats=3))
