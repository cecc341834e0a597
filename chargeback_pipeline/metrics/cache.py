"""In-process LRU cache of raw Prometheus responses (prometheus-source.md §5).

Re-materialising a day, or several tenants reading the same cluster, asks the same
question again; answering from memory keeps Prometheus load flat. Only successful
bodies are stored, so a transient failure is retried by the next run instead of being
remembered for an hour.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

MAX_ENTRIES = 512
# Batched answers (one question for all of a window's clusters) run to ~1 MB each: the
# entry count alone would let a 30-day run keep hundreds of MB of text alive (a 32 Mi
# budget still cost the 30-day benchmark 35 MiB of peak RSS; 8 Mi keeps a few days).
MAX_CHARS = 8 * 1024 * 1024
TTL_SECONDS = 3600.0


class ResponseCache:
    """Thread-safe LRU with a time-to-live; values are raw response texts."""

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        ttl_seconds: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_chars: int = MAX_CHARS,
    ) -> None:
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._chars = 0
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored_at, text = entry
            if self._clock() - stored_at >= self._ttl:
                del self._entries[key]
                self._chars -= len(text)
                return None
            self._entries.move_to_end(key)
            return text

    def put(self, key: Hashable, text: str) -> None:
        """Stores ``text`` (unless it alone exceeds the size budget), evicting the oldest."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._chars -= len(old[1])
            if len(text) > self._max_chars:
                return
            self._entries[key] = (self._clock(), text)
            self._chars += len(text)
            while len(self._entries) > self._max_entries or self._chars > self._max_chars:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._chars -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


RESPONSE_CACHE = ResponseCache()


def clear_response_cache() -> None:
    """Forget every cached response (tests, or after reloading Prometheus data)."""
    RESPONSE_CACHE.clear()
