"""Reading ahead on a thread (core/prefetch.py): same results in the same order, errors raised in
the caller after the results before them, the thread stopped when the caller stops early."""

from __future__ import annotations

import threading

import pytest

from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.prefetch import prefetched


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_results_come_in_order(depth):
    assert list(prefetched(lambda i: i * i, range(20), depth)) == [i * i for i in range(20)]


def test_work_runs_on_another_thread_and_ahead_by_at_most_depth():
    done, names = [], set()
    gate = threading.Event()

    def work(i):
        names.add(threading.current_thread().name)
        done.append(i)
        return i

    stream = prefetched(work, range(10), depth=2)
    assert next(stream) == 0
    for _ in range(50):  # let the reader fill the queue
        gate.wait(0.01)
    assert len(done) <= 1 + 2 + 1  # the one taken, the queue's two, one waiting to be put
    assert list(stream) == list(range(1, 10))
    assert threading.current_thread().name not in names


def test_an_error_surfaces_after_the_results_before_it_as_the_same_exception():
    error = RsVlmError("The raster file x.tif could not be read near pixel column 0, row 0; the file is damaged.")

    def work(i):
        if i == 3:
            raise error
        return i

    got = []
    with pytest.raises(RsVlmError) as caught:
        for value in prefetched(work, range(10), depth=2):
            got.append(value)
    assert got == [0, 1, 2]
    assert caught.value is error and str(caught.value) == str(error)


def test_closing_early_stops_the_reader():
    started = []

    def work(i):
        started.append(i)
        return i

    stream = prefetched(work, range(1000), depth=2)
    assert next(stream) == 0
    stream.close()
    count = len(started)
    threading.Event().wait(0.3)
    assert len(started) == count < 10  # nothing more is read once the consumer stopped
