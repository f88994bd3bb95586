"""What ``run.py perf2`` installs beside the bench venv: the previous release of modelgate and Portkey's gateway.

Both are cached under bench/ (git-ignored) and rebuilt only when what they are built from changes:

- ``bench/.baseline-<sha>/``: ``git archive <ref>`` of this repository (the tree of that commit, not the work
  tree) with its own venv (``pip install .``), so the previous release runs beside the current tree in one
  run. The default ref is the commit before issue 13's work (``BASELINE_REF``).
- ``bench/.portkey/``: ``npm install @portkey-ai/gateway@<version>`` and ``PORTKEY_PATCHES`` applied to its
  bundled ``build/start-server.js``. Each patch is an exact string replacement that must match once, so a
  different version fails loudly instead of running unpatched.

Runs under any python >= 3.11 (before the bench venv exists).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: The last commit before issue 13's work (the "previous release" of the same-run comparison).
BASELINE_REF = "c7f4b12"
PORTKEY_VERSION = "1.15.2"
PORTKEY_DIR = BENCH / ".portkey"
PORTKEY_SERVER = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"

#: (why, exact text in build/start-server.js, replacement).
PORTKEY_PATCHES: tuple[tuple[str, str, str], ...] = (
    (
        # Portkey-AI/gateway#1389. Node 20: a streamed reply is built as `new Response(stream, upstreamResponse)`;
        # under @hono/node-server's Response that keeps the upstream response's *immutable* headers, and the
        # gateway's next step (`updateHeaders`: `headers.append("x-portkey-...")`) throws `TypeError: immutable`,
        # so every `stream: true` request answers 500 "Something went wrong". The fix copies the headers.
        "stream path: copy the upstream headers into the relayed Response (#1389)",
        ":new Response(p,e)}const Ad=",
        ":new Response(p,{status:e.status,statusText:e.statusText,headers:new Headers(e.headers)})}const Ad=",
    ),
    (
        # The node server listens on every interface by default; the bench keeps everything on loopback.
        "listen on 127.0.0.1 only",
        "e({fetch:Lu.fetch,port:Ku})",
        'e({fetch:Lu.fetch,port:Ku,hostname:"127.0.0.1"})',
    ),
)


def _run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def resolve(ref: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench: --baseline-ref {ref!r} is not a commit of this repository: {done.stderr.strip()}")
    return done.stdout.strip()


def ensure_baseline(ref: str) -> Path:
    """The previous release's venv ``bin`` directory (built once per commit)."""
    sha = resolve(ref)
    home = BENCH / f".baseline-{sha[:12]}"
    stamp = home / ".bench-stamp"
    if stamp.exists() and stamp.read_text() == sha:
        return home / ".venv" / "bin"
    print(f"bench: installing modelgate at {sha[:12]} into {home.relative_to(ROOT)} (the previous release)", flush=True)
    shutil.rmtree(home, ignore_errors=True)
    (home / "tree").mkdir(parents=True)
    with tempfile.TemporaryFile() as archive:
        _run(["git", "-C", str(ROOT), "archive", "--format=tar", sha], stdout=archive)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(home / "tree", filter="data")
    _run([sys.executable, "-m", "venv", str(home / ".venv")])
    pip = [str(home / ".venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, str(home / "tree")])
    stamp.write_text(sha)
    return home / ".venv" / "bin"


def _portkey_want() -> str:
    patches = repr(PORTKEY_PATCHES).encode()
    return f"{PORTKEY_VERSION} {hashlib.sha256(patches).hexdigest()[:16]}"


def ensure_portkey() -> Path:
    """Portkey's gateway, installed and patched; returns its ``start-server.js``."""
    stamp = PORTKEY_DIR / ".bench-stamp"
    if stamp.exists() and stamp.read_text() == _portkey_want() and PORTKEY_SERVER.exists():
        return PORTKEY_SERVER
    if shutil.which("npm") is None:
        sys.exit("bench: npm is needed for Portkey's gateway (or leave it out with --no-portkey)")
    print(f"bench: npm install @portkey-ai/gateway@{PORTKEY_VERSION} into bench/.portkey", flush=True)
    shutil.rmtree(PORTKEY_DIR, ignore_errors=True)
    PORTKEY_DIR.mkdir()
    npm = ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(PORTKEY_DIR)]
    _run([*npm, f"@portkey-ai/gateway@{PORTKEY_VERSION}"])
    source = PORTKEY_SERVER.read_text()
    for why, old, new in PORTKEY_PATCHES:
        if source.count(old) != 1:
            sys.exit(f"bench: Portkey patch {why!r} does not apply to {PORTKEY_VERSION} ({source.count(old)} matches)")
        source = source.replace(old, new)
    PORTKEY_SERVER.write_text(source)
    stamp.write_text(_portkey_want())
    return PORTKEY_SERVER


def portkey_patch_notes() -> list[str]:
    return [why for why, _, _ in PORTKEY_PATCHES]
