"""Two threads beside a snapshot build, so that it uses the second core.

The build itself is Python and holds the GIL; what runs beside it is the work that lets the GIL
go: the database answering the next batch (`prefetched`) and hashing and file writes
(`Background`). Order is kept in both: a snapshot's bytes do not depend on the threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class Background:
    """Runs jobs on one thread, in the order given.

    The first error stops the work and is raised by the next `submit` or by `close`."""

    def __init__(self, depth: int = 8):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)  # bounds the memory in flight
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as error:  # handed to the building thread
                    self._error = error

    def submit(self, job: Callable[[], object]) -> None:
        self._raise()
        self._jobs.put(job)

    def close(self) -> None:
        """Wait for every job; raise the first error."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        """Let the jobs queued so far finish, and the thread end (errors are kept)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def prefetched(items: Iterator[T], connection, depth: int = 2) -> Iterator[T]:
    """The items of `items`, computed on a thread up to `depth` items ahead of the caller.

    `items` reads the database through `connection`, the caller's own (so it sees the same
    transaction), which is lent to the thread until this generator ends: the caller must not
    use it meanwhile. An error in `items` is raised here; closing this generator stops the
    thread and closes `items` before it returns.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as error:  # raised in the caller
            put((_DONE, error))
        finally:
            items.close()  # on this thread: its cursors close before the connection goes back

    connection.inc_thread_sharing()
    thread = threading.Thread(target=run, name="snapshot-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
        connection.dec_thread_sharing()
