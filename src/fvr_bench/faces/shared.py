"""Backends shared by every metric in the process.

:class:`SharedBackend` is the base of the model-holding backends (dlib, MediaPipe,
MTCNN); :func:`shared` keeps one instance per settings key, so models load once.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class SharedBackend:
    """A backend shared by every metric in the process: copying a metric shares it (the
    models are read-only), pickling it drops the loaded models (they reload lazily)."""

    _lazy: tuple[str, ...] = ()  # attributes that hold loaded models

    def __deepcopy__(self, memo: dict) -> SharedBackend:
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_lock"}
        for name in self._lazy:
            state[name] = {} if isinstance(state.get(name), dict) else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


_SHARED: dict[tuple, Any] = {}
_SHARED_LOCK = threading.Lock()


def shared(key: tuple, make: Callable[[], Any]) -> Any:
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = make()
        return _SHARED[key]
