"""One progress event stream: pull (and load) events are throttled once, here, and rendered by a tqdm bar,
the model manager widget and NDJSON lines alike.

Pullers emit an event per chunk received (thousands a second on loopback); every front end wants about ten a
second. :class:`Throttle` sits between the two once (the model service wraps the caller's callback in it), so
no renderer keeps its own clock. Cheap to import: tqdm is imported by the bar when it first draws.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mr_notebook.store.pull import PullProgress

#: Seconds between two "downloading" events of one layer that front ends get.
INTERVAL = 0.1


class Throttle:
    """A progress callback that passes on every status change and every finished layer, and otherwise at most
    one event per layer every ``interval`` seconds (the last one of a run is never lost: it ends the layer).

    Thread-safe: pullers of split models call it from several threads.
    """

    def __init__(
        self,
        callback: Callable[[PullProgress], None],
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.callback = callback
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str | None, float] = {}
        self._status: str | None = None

    def __call__(self, event: PullProgress) -> None:
        now = self.clock()
        finished = event.total > 0 and event.completed >= event.total
        with self._lock:
            changed = event.status != self._status
            self._status = event.status
            if not changed and not finished and now - self._sent.get(event.digest, 0.0) < self.interval:
                return
            self._sent[event.digest] = now
        self.callback(event)


def throttled(callback: Callable[[PullProgress], None] | None) -> Callable[[PullProgress], None] | None:
    """``callback`` behind a :class:`Throttle` (None stays None; a Throttle is not wrapped twice)."""
    if callback is None or isinstance(callback, Throttle):
        return callback
    return Throttle(callback)


class ProgressBar:
    """A ``tqdm.auto`` bar in bytes (a widget bar in a notebook, text on stderr in a terminal) fed by events."""

    def __init__(self, label: str, *, disable: bool = False) -> None:
        self.label = label
        self.disable = disable
        self._bar: Any = None

    def __call__(self, event: PullProgress) -> None:
        if self.disable or (event.overall_total <= 0 and event.total <= 0):
            return
        total = event.overall_total or event.total
        done = event.overall_completed if event.overall_total else event.completed
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.label, leave=True)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(max(0, done - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Meter:
    """Bytes, speed (smoothed over quarter-second windows) and time left of a pull, from its events."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._sample: tuple[float, int] | None = None
        self._speed = 0.0
        self.completed = 0
        self.total = 0

    def update(self, event: PullProgress, now: float | None = None) -> dict[str, Any]:
        """What a progress display shows after ``event``: status, message, bytes, speed and ETA."""
        now = time.monotonic() if now is None else now
        self.completed, self.total = event.overall_completed, event.overall_total
        if self._sample is None or self.completed < self._sample[1]:
            self._sample = (now, self.completed)
        elif now - self._sample[0] >= 0.25:
            rate = (self.completed - self._sample[1]) / (now - self._sample[0])
            self._speed = rate if self._speed == 0 else 0.6 * self._speed + 0.4 * rate
            self._sample = (now, self.completed)
        left = self.total - self.completed
        eta = left / self._speed if self._speed > 0 and left > 0 else None
        return {
            "status": event.status,
            "message": event.message,
            "completed": self.completed,
            "total": self.total,
            "speed": self._speed,
            "eta": eta,
        }

    def totals(self) -> dict[str, Any]:
        """The whole pull: bytes and the mean speed."""
        elapsed = time.monotonic() - self._start
        return {
            "completed": self.completed,
            "total": self.total,
            "speed": self.completed / elapsed if elapsed > 0 else 0.0,
            "eta": None,
        }
