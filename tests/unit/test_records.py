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


def _frozen_outcome(action):
    """The exception type and message an action raised, or None."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the outcome is what is compared
        return type(error), str(error)
    return None


def test_frozen_assignment_and_deletion_match_dataclass_on_the_class_and_a_plain_subclass():
    plain, ours = _pair(True)

    class PlainChild(plain):  # not a dataclass: may hold attributes that are not fields
        pass

    class OurChild(ours):
        pass

    for base in (plain, ours):
        assert base.__setattr__.__qualname__.endswith("Point.__setattr__")
        assert base.__delattr__.__qualname__.endswith("Point.__delattr__")
    cases = [
        lambda cls: setattr(cls(1), "x", 2),  # a field
        lambda cls: setattr(cls(1), "other", 2),  # not a field, on the exact class
        lambda cls: delattr(cls(1), "y"),
        lambda cls: delattr(cls(1), "other"),
    ]
    for case in cases:
        expected = _frozen_outcome(lambda: case(plain))
        assert expected is not None and expected[0] is dataclasses.FrozenInstanceError
        assert _frozen_outcome(lambda: case(ours)) == expected
        # On a subclass that is not a dataclass, only the fields are refused.
        ours_child, plain_child = _frozen_outcome(lambda: case(OurChild)), _frozen_outcome(lambda: case(PlainChild))
        assert (ours_child and ours_child[0]) is (plain_child and plain_child[0])
    child = OurChild(1)
    child.other = 5
    assert child.other == 5
    del child.other
    assert not hasattr(child, "other")


def test_frozen_methods_are_shared_code_not_compiled_per_class():
    @record(frozen=True)
    class A:
        a: int

    @record(frozen=True)
    class B:
        b: int

    assert A.__setattr__.__code__ is B.__setattr__.__code__
    assert A.__delattr__.__code__ is B.__delattr__.__code__
    assert dataclasses.fields(A)[0].name == "a" and A.__dataclass_params__.frozen  # still a frozen dataclass


def test_a_record_without_docstring_keeps_none_and_one_with_a_docstring_keeps_it():
    # dataclass stores its signature's text in a class without a docstring (every class under -OO):
    # a string per class that nothing reads.
    @record(frozen=True)
    class Bare:
        value: int

    @record
    class Documented:
        """Said here."""

        value: int

    assert Bare.__doc__ is None
    assert Documented.__doc__ == "Said here."
