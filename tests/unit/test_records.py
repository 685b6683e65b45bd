"""`record` behaves as `dataclass` does for repr, equality and hashing, with shared methods."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from ipsec_mesh.records import record


def _pair(frozen: bool, **kw):
    """The same class body decorated by dataclass and by record."""

    def body():
        class Point:
            x: int
            y: str = "a"
            secret: bytes = field(default=b"k", repr=False)
            note: str = field(default="", compare=False)
        return Point

    return dataclass(frozen=frozen, **kw)(body()), record(frozen=frozen, **kw)(body())


@pytest.mark.parametrize("frozen", [False, True])
def test_repr_and_equality_match_dataclass(frozen):
    plain, ours = _pair(frozen)
    for args in [(1,), (2, "b"), (3, "c", b"s", "n")]:
        assert repr(ours(*args)) == repr(plain(*args))
    assert ours(1, "a", b"x", "one") == ours(1, "a", b"x", "two")  # note is not compared
    assert ours(1, "a", b"x") != ours(1, "a", b"y")
    assert ours(1) != ours(2)
    assert ours(1) != plain(1)  # another class, even with the same fields
    assert ours(1).__eq__(object()) is NotImplemented


def test_frozen_hash_is_dataclass_hash_and_assignment_is_refused():
    plain, ours = _pair(True)
    for args in [(1,), (2, "b", b"s", "x")]:
        assert hash(ours(*args)) == hash(plain(*args))
    assert len({ours(1, "a", b"k", "one"), ours(1, "a", b"k", "two")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours(1).x = 2  # type: ignore[misc]


def test_mutable_record_is_unhashable_like_a_dataclass():
    _, ours = _pair(False)
    with pytest.raises(TypeError):
        hash(ours(1))


def test_single_and_no_field_records_hash_as_tuples():
    @record(frozen=True)
    class One:
        value: int

    @record(frozen=True)
    class Empty:
        pass

    assert hash(One(5)) == hash((5,))
    assert hash(Empty()) == hash(())
    assert One(5) == One(5) and One(5) != One(6)
    assert Empty() == Empty()


def test_methods_the_class_defines_win():
    @record(frozen=True)
    class Own:
        value: int

        def __repr__(self) -> str:
            return "<own>"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 7

    assert repr(Own(1)) == "<own>"
    assert Own(1) == Own(2)
    assert hash(Own(3)) == 7


def test_repr_false_keeps_objects_repr_and_subclasses_compare_their_own_fields():
    @record(frozen=True, repr=False)
    class Key:
        material: bytes

    assert "material" not in repr(Key(b"secret"))

    @record(frozen=True, kw_only=True)
    class Base:
        a: int

    @record(frozen=True, kw_only=True)
    class Child(Base):
        b: int

    assert repr(Child(a=1, b=2)) == "test_repr_false_keeps_objects_repr_and_subclasses_compare_their_own_fields.<locals>.Child(a=1, b=2)"
    assert Child(a=1, b=2) != Child(a=1, b=3)
    assert Child(a=1, b=2) != Base(a=1)
    assert dataclasses.replace(Child(a=1, b=2), b=5) == Child(a=1, b=5)
