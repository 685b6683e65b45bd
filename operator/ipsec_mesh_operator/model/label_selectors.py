"""Kubernetes label selectors (matchLabels + matchExpressions), parsed once, matched often."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipsec_mesh.meshapi import fields

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(Exception):
    """A label selector in a resource is malformed."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, value: Any, path: str = "selector") -> LabelSelector:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise SelectorError(f"{path} must be an object")
        if unknown := fields.unknown_fields(value, path, {"matchLabels", "matchExpressions"}):
            raise SelectorError("; ".join(unknown))
        labels = value.get("matchLabels") or {}
        expressions = value.get("matchExpressions") or []
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise SelectorError(f"{path}.matchLabels must map strings to strings")
        if not isinstance(expressions, list):
            raise SelectorError(f"{path}.matchExpressions must be a list")
        return cls(tuple(sorted(labels.items())), tuple(
            _requirement(item, f"{path}.matchExpressions[{i}]") for i, item in enumerate(expressions)
        ))

    @property
    def is_empty(self) -> bool:
        """An empty selector selects everything."""
        return not self.match_labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            requirement.matches(labels) for requirement in self.expressions
        )


def _requirement(item: Any, path: str) -> Requirement:
    if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
        raise SelectorError(f"{path} needs a key")
    if unknown := fields.unknown_fields(item, path, {"key", "operator", "values"}):
        raise SelectorError("; ".join(unknown))
    operator = item.get("operator")
    if operator not in OPERATORS:
        raise SelectorError(f"{path}.operator must be one of {', '.join(OPERATORS)}")
    values = item.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"{path}.values must be a list of strings")
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{path}: {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{path}: {operator} takes no values")
    return Requirement(item["key"], operator, frozenset(values))
