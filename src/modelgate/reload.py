"""Reload the catalogue without a restart: on SIGHUP and, opt-in, when the file changes.

A reload builds a complete new ``Catalogue`` and swaps one reference (``GatewayState.swap_catalogue``),
so a request sees the old or the new catalogue, never a mix. A broken new file never takes the service
down: the last good catalogue keeps serving and one log line says why.

Both triggers run their reload on the event loop thread (a signal handler registered with
``loop.add_signal_handler`` and an ``asyncio`` task), so a swap never races a request half-way
through reading the catalogue. With ``modelgate serve --workers N`` uvicorn's supervisor owns SIGHUP
and replaces the workers one by one (a worker that cannot load the file exits and the old one stays).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from watchfiles import Change, awatch

from modelgate.catalogue import default_catalogue_path
from modelgate.errors import CatalogueError

if TYPE_CHECKING:
    from modelgate.app import GatewayState

log = logging.getLogger("modelgate.reload")


def one_line(message: str) -> str:
    """A multi-problem ``CatalogueError`` message as one log line."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def reload_catalogue(state: GatewayState, trigger: str) -> bool:
    """Load the file again and swap it in; on a broken file keep the last good catalogue and log why.

    Never raises: it runs in the file watch's loop and as the SIGHUP handler, and a failure that escaped
    would end the watch, so a file fixed afterwards would not be seen.
    """
    previous = state.catalogue
    try:
        state.reload()
    except CatalogueError as exc:
        log.error(
            "catalogue reload (%s) failed, still serving the last good catalogue (%d models): %s",
            trigger,
            len(previous.models),
            one_line(exc.message),
        )
        return False
    except Exception:  # a bug of ours, not the file's: the same promise, with the traceback for the report
        log.exception(
            "catalogue reload (%s) failed unexpectedly, still serving the last good catalogue (%d models)",
            trigger,
            len(previous.models),
        )
        return False
    return True


def catalogue_file(state: GatewayState) -> Path:
    """The catalogue file as configured: absolute, its symlinks not followed (they may be re-pointed)."""
    return (state.settings.config_path or default_catalogue_path()).absolute()


async def watch_catalogue(state: GatewayState, stop: asyncio.Event) -> None:
    """Reload whenever the catalogue file is written, replaced or re-created, until ``stop`` is set.

    The parent directory is watched rather than the file: editors and ``mv`` replace the file by a
    rename, after which a watch on the old inode would stay silent. So is the directory of the file its
    symlinks lead to; when a save re-points them (a Kubernetes ConfigMap update swaps ``..data``), the
    watch moves to where they lead now.
    """
    target = catalogue_file(state)
    log.info("watching %s for changes", target)
    try:
        while not stop.is_set():
            await _watch_until_relinked(state, target, stop)
    except Exception as exc:  # e.g. out of inotify watches: serving goes on, SIGHUP still reloads
        log.error("watching %s stopped: %s", target, exc)


async def _watch_until_relinked(state: GatewayState, target: Path, stop: asyncio.Event) -> None:
    """Reload on every change of ``target``, until ``stop`` or until ``target`` resolves to another file."""
    resolved = _where_it_leads(target)

    def is_relevant(change: Change, path: str) -> bool:
        if change == Change.deleted:
            return False
        changed = Path(path)
        # A symlink beside the file may be one it resolves through (``..data``); other files there (the
        # SQLite ledger's) are not.
        return changed in (target, resolved) or (changed.parent == target.parent and changed.is_symlink())

    directories = sorted({d for d in (target.parent, resolved.parent) if d.is_dir()})
    async for _ in awatch(*directories, watch_filter=is_relevant, stop_event=stop, recursive=False):
        reload_catalogue(state, "file changed")
        if _where_it_leads(target) != resolved:
            return


def _where_it_leads(target: Path) -> Path:
    """``target`` with its symlinks followed; itself while they loop (a swap half done): the reload says why."""
    try:
        return target.resolve()
    except (OSError, RuntimeError):
        return target


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@asynccontextmanager
async def catalogue_reloading(state: GatewayState, *, sighup: bool) -> AsyncIterator[None]:
    """For the app's lifespan: SIGHUP (when asked and in the main thread) and the opt-in file watch."""
    loop = asyncio.get_running_loop()
    # Signal handlers belong to the process: only the main thread of ``modelgate serve`` installs one,
    # never an app served from a test thread.
    sighup_installed = sighup and _in_main_thread() and hasattr(signal, "SIGHUP")
    if sighup_installed:
        loop.add_signal_handler(signal.SIGHUP, reload_catalogue, state, "SIGHUP")
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_catalogue(state, stop)) if state.settings.watch_config else None
    try:
        yield
    finally:
        if sighup_installed:
            loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            stop.set()
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
