"""vlab's own asyncio event loop, in one background daemon thread shared by all VMs.

Why: the synchronous API must work inside Jupyter, whose kernel already runs an
asyncio loop in the main thread (``asyncio.run`` and the ``qemu.qmp`` legacy
wrapper fail there with "This event loop is already running"). Every QMP client
and console reader lives on this private loop; synchronous callers hand it
coroutines with :func:`run_sync` and block on a ``concurrent.futures`` future,
which works from any thread whether or not a loop is running there. Async
callers use :func:`run_async`, which awaits the same work from their own loop.

The thread also spawns QEMU (:mod:`vlab.qemu.process`): ``PR_SET_PDEATHSIG``
fires when the *thread* that forked the child exits, and this thread lives as
long as the Python process, so a QEMU never dies just because the user's
thread that started it ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from vlab.errors import VlabError

__all__ = ["get_loop", "run_sync", "run_async", "call_in_loop_thread", "in_loop_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def _serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=_serve, name="vlab-qemu-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def in_loop_thread() -> bool:
    """True when called from the loop's own thread (where blocking on it would deadlock)."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None, what: str) -> T:
    """Run ``coro`` on the vlab loop and wait for its result.

    :param timeout: seconds before giving up (None waits forever; vlab always passes one).
    :param what: the operation, for the error message.
    :raises VlabError: on timeout (the coroutine is cancelled).
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError(f"{what}: synchronous vlab call from the vlab loop thread would deadlock")
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise VlabError(f"{what} did not finish within {timeout} s", field=what, value=timeout,
                        fix="QEMU or the guest is stuck or very slow; check vm.console.tail() and retry") from None
    except BaseException:
        future.cancel()  # e.g. KeyboardInterrupt while waiting: don't leave the work running
        raise


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` running on the vlab loop, from any other loop (e.g. Jupyter's)."""
    loop = get_loop()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def call_in_loop_thread(function: Callable[[], T], timeout: float = 30.0) -> T:
    """Call a plain function in the loop thread and return its result (used to fork QEMU there)."""
    if in_loop_thread():
        return function()

    async def _call() -> T:
        return function()

    return run_sync(_call(), timeout, "call in the vlab loop thread")
