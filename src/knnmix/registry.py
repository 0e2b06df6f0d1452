"""A tiny name -> factory registry shared by datasets, noise models, networks and methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from knnmix.errors import KnnmixError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names are a one-line :class:`KnnmixError`.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object as ``name``. Registering the same function again (a notebook cell run
        twice: same module and qualified name) replaces it; another object under a taken name is an error."""
        if not isinstance(name, str) or not name.strip():
            how = " (write @register('name'), with the name in parentheses)" if callable(name) else ""
            raise KnnmixError(f"a {self.kind} name must be a non-empty string, got {name!r}{how}")

        def deco(obj: T) -> T:
            if name in self._items and _origin(self._items[name]) != _origin(obj):
                raise KnnmixError(f"{self.kind} {name!r} is already registered ({_origin(self._items[name])}); choose "
                                  f"another name, or unregister({name!r}) it first")
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove a registration (for plugins and tests that register temporary parts)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = did_you_mean(name, self._items)
            raise KnnmixError(f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def _origin(obj: object) -> str:
    """``module.qualname`` of a registered function or class (of a noise model: of its ``generate`` function)."""
    target = getattr(obj, "generate", obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__qualname__)}"
