"""Read ahead: tile batches are read on a background thread while the model encodes the last one.

GDAL (through rasterio) and numpy release the GIL while they decode and resample, and
onnxruntime does while it runs, so reading the next batch costs almost nothing next to
encoding this one. The queue is bounded, so at most ``depth`` batches wait in memory.

The source is only ever read from one thread at a time: the reader thread while the generator
runs, and it has stopped (joined) once the generator is exhausted or closed. Callers close it in a
``finally`` (a generator left suspended in a frame that a traceback keeps is not closed, and its
thread would go on reading while the file is closed or Python shuts down). An error in the
reader (a damaged file, a cancelled job) is raised in the consuming thread, as the same exception
object, exactly where the plain loop would have raised it: after the batches before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def prefetched(work: Callable[[T], R], items: Iterable[T], depth: int = 2) -> Iterator[R]:
    """``work(item)`` for each item, in order, computed up to ``depth`` items ahead on a thread.

    Args:
        work: What to do with one item (for example, read one batch of tiles).
        items: The items, consumed by the reader thread.
        depth: Results computed ahead at most (0: no thread, plain ``map``).

    Yields:
        The results in the items' order.

    Raises:
        Exception: Whatever ``work`` raised, once the results before it have been yielded.
    """
    if depth <= 0:
        yield from map(work, items)
        return
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                results.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    finished = threading.Event()

    def reader() -> None:
        try:
            for item in items:
                if stop.is_set() or not put((True, work(item))):
                    return
            put((True, _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))
        finally:
            finished.set()

    thread = threading.Thread(target=reader, name="rs-vlm-tile-reader", daemon=True)
    try:
        # Ctrl-C can land inside start(), before or after the thread is launched; either way the
        # finally below stops it (the reader looks at ``stop`` before each item it works on).
        thread.start()
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        # Wait for the reader to finish the item in hand; a thread that was never launched, or is
        # launched only now, finds ``stop`` set and reads nothing.
        while not finished.wait(0.05) and thread.is_alive():
            pass
