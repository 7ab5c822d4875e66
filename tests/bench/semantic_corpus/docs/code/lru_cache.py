"""A bounded mapping that forgets the entry used longest ago."""

from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key, default=None):
        try:
            value = self._items.pop(key)
        except KeyError:
            self.misses += 1
            return default
        # re-insert at the end: most recently used
        self._items[key] = value
        self.hits += 1
        return value

    def put(self, key, value) -> None:
        if key in self._items:
            self._items.pop(key)
        elif len(self._items) >= self.capacity:
            # evict the oldest entry (the first one in insertion order)
            self._items.popitem(last=False)
        self._items[key] = value

    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
