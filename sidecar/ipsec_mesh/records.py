"""`record`: a dataclass whose __repr__, __eq__ and __hash__ are shared, not compiled per class.

`dataclasses.dataclass` compiles source text for every method of every class (exec), and
the sidecar defines over a hundred of them: their __repr__, __eq__ and __hash__ alone were
0.47 MB of every mesh-mode sidecar's private memory (docs/benchmarks.md). Here those three
are one function each, driven by the field names the class records at decoration; a frozen
class's __setattr__/__delattr__ are closures of one shared code (dataclass's are dropped, about
0.13 MB); __init__ stays dataclass's own (a shared one would cost CPU per object), so `fields()`,
`replace()`, `asdict()`, pattern matching and type checkers see an ordinary dataclass. A class
without a docstring keeps `__doc__` None (dataclass would store its signature's text there).

Same behaviour as dataclass's generated methods: repr `Name(a=1, b='x')` over the fields
with repr=True; equality only between instances of the exact same class, over the fields
with compare=True; a hash of the same tuple for a frozen class (fields with hash=True, or
hash=None and compare=True), no hash (unhashable) for a mutable one.

A leaf: it imports nothing of ours, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, fields
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform, overload

_T = TypeVar("_T", bound=type)


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A C-level getter that always returns a tuple (attrgetter of one name returns the bare value).

    Stored on the class as a staticmethod, so that `self.__record_compare__` is the getter itself.
    """
    if len(names) >= 2:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_repr__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    key = self.__record_compare__
    return key(self) == key(other)


def _hash(self: Any) -> int:
    return hash(self.__record_hash__(self))


def _frozen_methods(cls: Any, names: tuple[str, ...]) -> tuple[Callable[..., None], Callable[..., None]]:
    """A frozen class's __setattr__ and __delattr__ with dataclass's rule, as closures of one shared code.

    dataclass exec's this pair per frozen class (about 2 kB each); the rule is the same: refuse any
    name on the exact class, a field's name on a subclass that is not itself a dataclass.
    """

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    __setattr__.__qualname__ = f"{cls.__qualname__}.__setattr__"
    __delattr__.__qualname__ = f"{cls.__qualname__}.__delattr__"
    return __setattr__, __delattr__


@overload
def record(cls: _T, /) -> _T: ...
@overload
def record(*, frozen: bool = ..., kw_only: bool = ..., repr: bool = ...) -> Callable[[_T], _T]: ...


@dataclass_transform(eq_default=True, kw_only_default=False, frozen_default=False)
def record(cls: Any = None, /, *, frozen: bool = False, kw_only: bool = False, repr: bool = True) -> Any:
    """`@dataclass` with the same arguments (frozen, kw_only, repr) and shared repr/eq/hash."""

    def wrap(target: Any) -> Any:
        # Methods the class body defines itself win, as with dataclass (a __hash__ of None
        # that Python added because the body defines __eq__ does not count).
        own = dict(target.__dict__)
        own_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
        doc = target.__doc__
        if doc is None:  # (every class under -OO) dataclass would store its signature's text there
            target.__doc__ = "-"
        target = dataclass(target, frozen=frozen, kw_only=kw_only, repr=False, eq=False)
        target.__doc__ = doc
        declared = fields(target)
        if frozen:  # dataclass's own pair is dropped (and freed) here
            target.__setattr__, target.__delattr__ = _frozen_methods(target, tuple(f.name for f in declared))
        if repr and "__repr__" not in own:
            target.__record_repr__ = tuple(f.name for f in declared if f.repr)
            target.__repr__ = _repr
        if "__eq__" not in own:
            target.__record_compare__ = staticmethod(_getter(tuple(f.name for f in declared if f.compare)))
            target.__eq__ = _eq
        if frozen and not own_hash:
            hashed = tuple(f.name for f in declared if (f.compare if f.hash is None else f.hash))
            target.__record_hash__ = staticmethod(_getter(hashed))
            target.__hash__ = _hash
        elif not own_hash:
            target.__hash__ = None  # mutable and compared by value: unhashable, as dataclass makes it
        return target

    return wrap if cls is None else wrap(cls)
