"""The cyclic garbage collector, set for a long-running server (``modelgate serve`` only).

CPython collects its youngest generation every 700 net new container objects. A relay makes a few per
token, and the requests in flight keep enough of them alive that young collections come every few
hundred tokens and promote objects that die soon after, into generations that are walked again. At 200
streams the collector was 11-13% of the server's CPU (perf: ``gc_collect_main``, ``visit_decref``,
``visit_reachable``); with the thresholds below, 4-5% (bench/README.md, "Second pass").

Reference cycles are still collected, a few thousand objects later: memory held by garbage stays in the
kilobytes. (``gc.freeze()`` after start-up would save about two points more, but what it freezes is never
collected again, and a catalogue reload replaces objects built at start.)
"""

from __future__ import annotations

import gc

#: Net new container objects between two young collections (CPython's default: 700).
YOUNG = 10_000
#: Young collections between two middle ones, and middle between two full ones (default: 10 and 10).
OLDER = 20


def tune_for_serving() -> None:
    gc.set_threshold(YOUNG, OLDER, OLDER)
