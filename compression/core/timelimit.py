"""A time limit for work that may never finish (tracing a model into a dependency graph).

The work runs in a thread; past the limit an exception is raised inside that thread (it stops at
its next Python instruction: Torch-Pruning's grouping loops are Python) and the caller gets
:class:`~compression.core.errors.UntraceableModelError` naming where the work was.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

from torch import nn

from compression.core.errors import UntraceableModelError


class TraceTimeout(Exception):
    """Raised inside the tracing thread when its time is up."""


def with_time_limit(fn: Callable, seconds: float, where: dict, model: nn.Module):
    """Run ``fn`` in a thread; past ``seconds``, stop it and name where it was."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as err:  # handed to the caller below
            result["error"] = err

    thread = threading.Thread(target=target, name="slimserve-trace", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(TraceTimeout)
        )
        thread.join(10)
        raise UntraceableModelError(
            f"Torch-Pruning did not finish {where.get('stage', 'tracing')} "
            f"{type(model).__name__} within {seconds:g} s: it stopped at "
            f"{where.get('module') or 'the first module'}. Expected a model whose forward "
            "runs on example_inputs with standard layers; raise the profile's "
            "trace_time_limit_s for a very large model"
        )
    if "error" in result:
        raise result["error"]
    return result["value"]
