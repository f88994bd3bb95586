"""modelgate benchmarks, one command: ``python bench/run.py all`` (or a part: models | stream | soak | servers |
clients | profile). See bench/README.md.

The script installs what it needs: ``bench/.venv`` (the project itself, editable, plus bench/requirements.txt),
nginx and wrk through apt where missing, and LiteLLM proxy into ``bench/.venv-litellm``. It then re-runs itself
inside ``bench/.venv`` pinned to the load core, and writes ``bench/results/<timestamp>/`` with results.md,
results.json, plot.png and every server's log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
LITELLM_VENV = BENCH / ".venv-litellm"
PARTS = ("all", "compare", "perf2", "models", "stream", "soak", "servers", "clients", "profile", "micro")
LEVELS = "1,10,100,200,500"


# --- bootstrap (runs under any python >= 3.11) -----------------------------------------------------------


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True)


def ensure_bench_venv() -> None:
    """Create/refresh bench/.venv when requirements.txt or pyproject.toml changed, then re-exec inside it."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    want = hashlib.sha256((BENCH / "requirements.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    stamp = VENV / ".bench-stamp"
    if not (VENV / "bin" / "python").exists():
        print("bench: creating bench/.venv", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not stamp.exists() or stamp.read_text() != want.hexdigest():
        print("bench: installing the project and bench/requirements.txt into bench/.venv", flush=True)
        _pip(VENV, "--upgrade", "pip")
        _pip(VENV, "-e", str(ROOT), "-r", str(BENCH / "requirements.txt"))
        stamp.write_text(want.hexdigest())
    python = str(VENV / "bin" / "python")
    os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])


def ensure_system_tools(tools: dict[str, str]) -> None:
    """``{binary: apt package}``: install the packages of the missing binaries."""
    missing = sorted({package for binary, package in tools.items() if shutil.which(binary) is None})
    if not missing:
        return
    print(f"bench: apt-get install {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def ensure_litellm() -> None:
    if (LITELLM_VENV / "bin" / "litellm").exists():
        return
    print("bench: installing litellm[proxy] into bench/.venv-litellm (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    _pip(LITELLM_VENV, "--upgrade", "pip")
    _pip(LITELLM_VENV, "litellm[proxy]")


# --- the run ----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "part", choices=PARTS, help="compare = models + stream; all = compare + soak; perf2 = issue 13's whole table"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5, help="wrk duration of one /models run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--stream-seconds", type=float, default=5, help="window of one streaming run")
    p.add_argument("--warmup", type=float, default=1, help="start of a streaming window not counted in tokens/s")
    p.add_argument("--levels", default=LEVELS, help="concurrent streams, comma-separated")
    p.add_argument("--systems", default="direct,api,v1,litellm", help="streaming systems: direct,api,v1,litellm")
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream sent by the fake")
    p.add_argument("--interval-ms", type=float, default=5, help="gap between the fake's tokens")
    p.add_argument("--minutes", type=float, default=10, help="soak duration")
    p.add_argument("--soak-streams", type=int, default=200)
    p.add_argument("--soak-interval", type=float, default=10, help="seconds between RSS samples")
    p.add_argument("--route", choices=("api", "v1", "models"), default="api", help="soak (api|v1) / profile route")
    p.add_argument("--profile-streams", type=int, default=200)
    p.add_argument(
        "--server",
        choices=("serve", "uvicorn", "granian"),
        default="serve",
        help="how modelgate is run (serve = `modelgate serve`)",
    )
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument("--no-portkey", action="store_true", help="perf2: leave Portkey's gateway out")
    p.add_argument("--no-prev", action="store_true", help="perf2: leave the previous release out")
    p.add_argument("--baseline-ref", default=None, help="perf2: the previous release's commit (default c7f4b12)")
    p.add_argument("--stream-repeats", type=int, default=None, help="perf2: repeats of each streaming run (2)")
    p.add_argument("--paced-seconds", type=float, default=8, help="perf2: window of one paced non-streamed run")
    p.add_argument("--startup-repeats", type=int, default=10, help="perf2: runs of each start-up command")
    p.add_argument(
        "--nonstream-systems", default="v1,prev-v1,portkey,litellm", help="perf2: non-streamed systems besides direct"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 repeat, 2 s runs, streams 1,10, soak 0.5 min")
    p.add_argument("--out", type=Path, help="results directory (default bench/results/<timestamp>)")
    args = p.parse_args()
    perf2 = args.part == "perf2"
    if perf2:
        from perf2 import PERF2_LEVELS, PERF2_SYSTEMS

        # Issue 13's levels and peers unless given; 2 streaming repeats keep the whole run near 20 min.
        if args.levels == LEVELS:
            args.levels = PERF2_LEVELS
        if args.systems == "direct,api,v1,litellm":
            args.systems = PERF2_SYSTEMS
        if args.stream_repeats is None:
            args.stream_repeats = 2
    if args.stream_repeats is None:
        args.stream_repeats = args.repeats
    if args.quick:
        args.repeats, args.seconds, args.stream_seconds, args.warmup = 1, 2, 2, 0.5
        args.levels, args.minutes, args.soak_interval, args.profile_streams = "1,10", 0.5, 5, 10
        args.stream_repeats, args.paced_seconds, args.startup_repeats = 1, 2, 3
    args.levels = [int(level) for level in str(args.levels).split(",")]
    args.systems = [s.strip() for s in str(args.systems).split(",") if s.strip()]
    if args.no_litellm:
        args.systems = [s for s in args.systems if s != "litellm"]
    if args.no_portkey:
        args.systems = [s for s in args.systems if s != "portkey"]
    if args.no_prev:
        args.systems = [s for s in args.systems if not s.startswith("prev-")]
    args.nonstream_systems = [s.strip() for s in str(args.nonstream_systems).split(",") if s.strip()]
    if args.no_litellm:
        args.nonstream_systems = [s for s in args.nonstream_systems if s != "litellm"]
    return args


def machine() -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        except OSError:
            return "?"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "modelgate": f"{commit}{' + uncommitted changes in src/' if dirty not in ('?', '') else ''}",
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "-v"]).split("Copyright")[0].strip(),
        "load on the machine at start": " ".join(os.getloadavg().__repr__().strip("()").split(", ")),
    }


def catalogue_document() -> dict[str, Any]:
    """The default catalogue's ``GET /models`` document (what LiteLLM and the fake are configured from)."""
    from modelgate.catalogue import load_catalogue

    document: dict[str, Any] = json.loads(load_catalogue(None).body)
    return document


def main() -> None:
    ensure_bench_venv()
    args = parse_args()
    part = args.part
    from harness import LOAD_CORE

    os.sched_setaffinity(0, {LOAD_CORE})  # the orchestrator samples and waits: keep it off the server core
    prev_bin: Path | None = None
    portkey_js: Path | None = None
    if part == "perf2":
        import installs

        args.baseline_ref = args.baseline_ref or installs.BASELINE_REF
        prev_bin = None if args.no_prev else installs.ensure_baseline(args.baseline_ref)
        portkey_js = None if args.no_portkey else installs.ensure_portkey()
    if part in ("all", "compare", "models", "perf2"):
        ensure_system_tools({"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"})
    else:
        ensure_system_tools({"wrk": "wrk", "taskset": "util-linux"})
    if not args.no_litellm and part in ("all", "compare", "models", "stream", "perf2"):
        ensure_litellm()

    import choices_bench
    import models_bench
    import soak_bench
    import stream_bench

    results: Path = args.out or BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "command": " ".join(["python bench/run.py", *sys.argv[1:]]),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    catalogue = catalogue_document()
    t0 = time.monotonic()
    print(f"bench: {part} -> {results}", flush=True)
    if part in ("all", "compare", "models"):
        data["models"] = models_bench.run(
            results,
            repeats=args.repeats,
            seconds=args.seconds,
            connections=args.connections,
            litellm=not args.no_litellm,
            server=args.server,
        )
    if part == "perf2":
        import perf2

        data.update(perf2.run(args, results, catalogue, prev_bin, portkey_js))
    if part in ("all", "compare", "stream"):
        data["stream"] = stream_bench.run(
            results,
            levels=args.levels,
            repeats=args.stream_repeats,
            seconds=args.stream_seconds,
            warmup=args.warmup,
            tokens=args.tokens,
            interval_ms=args.interval_ms,
            systems=args.systems,
            server=args.server,
            catalogue=catalogue,
        )
    if part in ("all", "soak"):
        data["soak"] = soak_bench.run(
            results,
            minutes=args.minutes,
            streams=args.soak_streams,
            interval_s=args.soak_interval,
            tokens=args.tokens,
            interval_ms=args.interval_ms,
            route_key=args.route,
            server=args.server,
            catalogue=catalogue,
        )
    if part == "servers":
        data["servers"] = choices_bench.servers(
            results,
            repeats=args.repeats,
            seconds=args.seconds,
            stream_seconds=args.stream_seconds,
            levels=[lv for lv in args.levels if lv in (1, 100, 500)] or args.levels,
            tokens=args.tokens,
            interval_ms=args.interval_ms,
            catalogue=catalogue,
        )
    if part == "clients":
        data["clients"] = choices_bench.clients(
            results,
            repeats=args.repeats,
            seconds=args.stream_seconds,
            levels=[lv for lv in args.levels if lv in (100, 500)] or args.levels,
            tokens=args.tokens,
            interval_ms=args.interval_ms,
            catalogue=catalogue,
        )
    if part == "profile":
        data["profile"] = choices_bench.profile(
            results,
            route_key=args.route,
            streams=args.profile_streams,
            seconds=max(args.stream_seconds, 10),
            tokens=args.tokens,
            interval_ms=args.interval_ms,
            server=args.server,
            catalogue=catalogue,
        )
    if part == "micro":
        from modelgate.catalogue import load_catalogue

        data["micro"] = choices_bench.micro(load_catalogue(None).body)
    data["duration_s"] = time.monotonic() - t0
    (results / "results.json").write_text(json.dumps(data, indent=1))
    write_markdown(data, results)
    print(f"bench: done in {data['duration_s']:.0f} s; see {results / 'results.md'}", flush=True)


def write_markdown(data: dict[str, Any], results: Path) -> None:
    import choices_bench
    import report

    lines = [
        "# modelgate benchmark results",
        "",
        f"`{data['command']}` — {data['started']}, {data['duration_s']:.0f} s. Server under test pinned to core 0, "
        "load generators and the fake upstream to core 1 (`taskset`). Every figure below comes from this run.",
        "",
        *(f"- {key}: {value}" for key, value in data["machine"].items()),
        "",
    ]
    if "baseline_ref" in data:  # perf2
        import installs
        import perf2

        lines += [
            f"- modelgate-prev: the tree at `{data['baseline_ref']}` in its own venv (`bench/.baseline-*`)",
            f"- Portkey gateway {installs.PORTKEY_VERSION}, patched: " + "; ".join(installs.portkey_patch_notes()),
            "",
            *perf2.targets(data),
            "",
        ]
    if "models" in data:
        lines += [*report.models_section(data["models"]), ""]
        lines += [f"- {label}: {note}" for label, note in data["models"]["notes"].items()] + [""]
    if "stream" in data:
        report.plot(data["stream"], results / "plot.png")
        lines += [*report.stream_section(data["stream"]), "", "![streaming](plot.png)", ""]
        lines += [f"- {s['label']}: {s['note']}" for s in data["stream"]["systems"].values()] + [""]
    if "nonstream" in data:
        import perf2

        lines += [*perf2.nonstream_section(data), ""]
    if "workers" in data:
        import perf2

        lines += [*perf2.workers_section(data), ""]
    if "startup" in data:
        import perf2

        lines += [*perf2.startup_section(data), ""]
    if "soak" in data:
        report.soak_plot(data["soak"], results / "soak.png")
        lines += [*report.soak_section(data["soak"]), "", "![soak](soak.png)", ""]
    if "servers" in data:
        lines += [*choices_bench.servers_section(data["servers"]), ""]
    if "clients" in data:
        lines += [*choices_bench.clients_section(data["clients"]), ""]
    if "profile" in data:
        lines += [*choices_bench.profile_section(data["profile"]), ""]
    if "micro" in data:
        lines += [*choices_bench.micro_section(data["micro"]), ""]
    (results / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
