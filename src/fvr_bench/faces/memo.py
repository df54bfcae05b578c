"""The per-frame memo: one process-wide LRU table of face-analysis results.

Results are keyed by ``(analysis, settings, sha1 of the frame's 8-bit pixels and shape,
geometry)``, so three metrics that all need the dlib detection of a frame trigger one
detection. Frames are keyed by content, not by position: a frame repeated in a clip, or a
restored frame equal to its GT, is analysed once. :data:`MEMO` counts the real
computations per analysis (``MEMO.calls``) and the hits (``MEMO.hits``), which the tests
use.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from typing import Any, Callable, Hashable


class FaceMemo:
    """Process-wide LRU table of face-analysis results.

    ``get_or_compute(analysis, key, fn)`` returns the stored value of
    ``(analysis, *key)`` or computes ``fn()``, stores and returns it. ``calls[analysis]``
    counts computations, ``hits[analysis]`` memo hits. ``None`` results (no face) are
    stored too, so a failed detection is not retried by the next metric.
    """

    def __init__(self, maxsize: int = 8192) -> None:
        self.maxsize = maxsize
        self._table: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()

    def lookup(self, analysis: str, key: tuple) -> tuple[bool, Any]:
        full = (analysis, *key)
        with self._lock:
            if full in self._table:
                self._table.move_to_end(full)
                self.hits[analysis] += 1
                return True, self._table[full]
        return False, None

    def store(self, analysis: str, key: tuple, value: Any) -> None:
        full = (analysis, *key)
        with self._lock:
            self.calls[analysis] += 1
            self._table[full] = value
            self._table.move_to_end(full)
            while len(self._table) > self.maxsize:
                self._table.popitem(last=False)

    def get_or_compute(self, analysis: str, key: tuple, compute: Callable[[], Any]) -> Any:
        found, value = self.lookup(analysis, key)
        if found:
            return value
        value = compute()
        self.store(analysis, key, value)
        return value

    def values(self, analysis: str) -> list[Any]:
        """The stored results of one analysis (oldest first)."""
        with self._lock:
            return [value for key, value in self._table.items() if key[0] == analysis]

    def clear(self) -> None:
        with self._lock:
            self._table.clear()
            self.calls.clear()
            self.hits.clear()

    def __len__(self) -> int:
        return len(self._table)


MEMO = FaceMemo(maxsize=4096)  # a clip of 81 frames × 2 videos × every analysis fits many times


def clear_memo() -> None:
    """Forget every memoised result and reset the call counters."""
    MEMO.clear()
