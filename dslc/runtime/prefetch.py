"""Batches made ahead: while onnxruntime runs a step (it releases the GIL), one background thread
reads, preprocesses and augments the next ones, so an epoch takes the time of its steps.

Order and content are those of the loop without it: one thread makes the batches one after the
other, each a pure function of its item (the trainer's: examples and global step), and hands them
over in order. An error while making a batch (a label outside one_hot's classes) is raised where
that batch would have been made, in the loop.

How far ahead: up to `depth` batches, and no more than BUDGET bytes of them (measured on the first).
A deep queue matters on a busy machine: each time the loop finds it empty it waits for the thread to
be scheduled, which there costs milliseconds; with a whole epoch's batches ahead (within the budget),
the next epoch's are made while the last one is evaluated. `depth` 0 makes each batch in the loop itself.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable

import numpy as np

BUDGET = 128 * 2**20  # bytes of batches made ahead, at most
_END = object()


class Prefetch:
    """`with Prefetch(items, make, depth) as made: for item, batch in made: ...`: make(item) for each
    item, in order, ahead of the loop. Leaving the block stops the thread."""

    def __init__(self, items: Iterable, make: Callable, depth: int = 32, budget: int = BUDGET):
        self.items, self.make, self.depth, self.budget = items, make, depth, budget  # (items: read by one thread)
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.slots: threading.Semaphore | None = None  # batches that may be made ahead of the loop
        self.thread = None
        if depth > 0:
            self.thread = threading.Thread(target=self._work, name="dslc-prefetch", daemon=True)
            self.thread.start()

    def _work(self) -> None:
        try:
            for i, item in enumerate(self.items):
                while i and not self.slots.acquire(timeout=0.05):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                made = self.make(item)
                if not i:  # (the first batch's size sets how many fit the budget)
                    self.slots = threading.Semaphore(max(1, min(self.depth, self.budget // max(_nbytes(made), 1))) - 1)
                self.queue.put((item, made, None))
        except BaseException as e:  # raised in the loop, at the batch that failed
            self.queue.put((None, None, e))
            return
        self.queue.put(_END)

    def __iter__(self):
        if self.thread is None:
            for item in self.items:
                yield item, self.make(item)
            return
        while True:
            value = self.queue.get()
            if value is _END:
                return
            item, made, error = value
            if error is not None:
                raise error
            self.slots.release()
            yield item, made

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0
