"""Garbage collection for a process that holds thousands of connections (the coordinator, the simulated
fleet's workers).

Every object a connection holds (its TLS and HTTP protocols, a long poll's request, task, coroutines and
timer) is tracked by the cyclic collector, and a long poll lives long enough to reach its oldest
generation. With 10,000 agents the coordinator tracked ~970,000 objects and the long polls' turnover set
off a full collection every 5-20 s, each holding the event loop 0.7-5.6 s under load (sync p99 1.9 s
against a p50 of 5 ms). Here full collections come a hundred times rarer (minutes apart at 10,000 agents);
young and middle ones stay as CPython sets them, short (larger young generations, tried at 10,000
objects, paused the loop 10-200 ms each under load). Objects made at start-up (modules, the app) are
frozen out of every collection.
"""

from __future__ import annotations

import gc

OLD_THRESHOLD = 1000  # middle collections per full one, at least (CPython's default: 10)


def for_many_connections() -> None:
    """Call once start-up is done."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, OLD_THRESHOLD)
