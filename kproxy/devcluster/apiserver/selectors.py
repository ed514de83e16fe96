"""Label and field selectors: parsing (with the server's validation) and matching.

Label selector grammar, as the API defines it: comma-separated requirements, each one of
``key``, ``!key``, ``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``,
``key notin (a,b)``, ``key>n`` or ``key<n``. Field selectors are ``field=value``,
``field==value`` or ``field!=value`` terms over a per-resource set of fields, with ``\\``
escaping ``,``, ``=`` and ``\\`` inside values.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kproxy.devcluster.apiserver.errors import ApiError, bad_request
from kproxy.devcluster.apiserver.validation import label_key_problems, label_value_problems


class Operator(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        op = self.operator
        if op is Operator.EXISTS:
            return present
        if op is Operator.DOES_NOT_EXIST:
            return not present
        if op in (Operator.EQUALS, Operator.IN):
            return present and labels[self.key] in self.values
        if op in (Operator.NOT_EQUALS, Operator.NOT_IN):
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            have = int(labels[self.key])
        except ValueError:
            return False
        bound = int(next(iter(self.values)))
        return have > bound if op is Operator.GREATER_THAN else have < bound


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)


_SPECIAL = set(",=!()<> \t\n")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t\n":
            i += 1
        elif text.startswith(("==", "!="), i):
            tokens.append(text[i : i + 2])
            i += 2
        elif char in ",=!()<>":
            tokens.append(char)
            i += 1
        else:
            start = i
            while i < len(text) and text[i] not in _SPECIAL:
                i += 1
            tokens.append(text[start:i])
    return tokens


class _LabelParser:
    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _tokenize(text)
        self._position = 0

    def _peek(self) -> str | None:
        return self._tokens[self._position] if self._position < len(self._tokens) else None

    def _take(self) -> str | None:
        token = self._peek()
        self._position += 1
        return token

    def _fail(self, why: str) -> ApiError:
        return bad_request(f"unable to parse requirement: {why}")

    def parse(self) -> LabelSelector:
        requirements: list[Requirement] = []
        if not self._tokens:
            return LabelSelector()
        while True:
            requirements.append(self._requirement())
            token = self._take()
            if token is None:
                break
            if token != ",":
                raise bad_request(
                    f"found '{token}', expected: ',' or 'end of string' in {self._text!r}"
                )
        requirements.sort(key=lambda r: r.key)
        return LabelSelector(tuple(requirements))

    def _identifier(self, what: str) -> str:
        token = self._take()
        if token is None or (token and token[0] in _SPECIAL):
            raise bad_request(f"found '{token or ''}', expected: {what} in {self._text!r}")
        return token

    def _requirement(self) -> Requirement:
        negated = self._peek() == "!"
        if negated:
            self._take()
        key = self._identifier("identifier")
        self._check_key(key)
        if negated:
            return Requirement(key, Operator.DOES_NOT_EXIST)
        token = self._peek()
        if token is None or token == ",":
            return Requirement(key, Operator.EXISTS)
        self._take()
        if token in ("=", "=="):
            return Requirement(key, Operator.EQUALS, frozenset({self._single_value()}))
        if token == "!=":
            return Requirement(key, Operator.NOT_EQUALS, frozenset({self._single_value()}))
        if token in ("<", ">"):
            value = self._identifier("integer value")
            try:
                int(value)
            except ValueError:
                raise self._fail(
                    f"for 'Gt', 'Lt' operators, the value must be an integer: {value!r}"
                ) from None
            operator = Operator.GREATER_THAN if token == ">" else Operator.LESS_THAN
            return Requirement(key, operator, frozenset({value}))
        if token in ("in", "notin"):
            values = self._value_set()
            operator = Operator.IN if token == "in" else Operator.NOT_IN
            return Requirement(key, operator, values)
        raise bad_request(
            f"found '{token}', expected: in, notin, =, ==, !=, gt, lt in {self._text!r}"
        )

    def _single_value(self) -> str:
        token = self._peek()
        at_end = token is None or token in (",", ")")
        value = "" if at_end else self._identifier("identifier")
        self._check_value(value)
        return value

    def _value_set(self) -> frozenset[str]:
        token = self._take()
        if token != "(":
            raise bad_request(
                f"found '{token or 'end of string'}', expected: '(' in {self._text!r}"
            )
        values: set[str] = set()
        while True:
            token = self._peek()
            if token is None:
                raise bad_request(f"found 'end of string', expected: ')' in {self._text!r}")
            if token == ")":
                self._take()
                break
            if token == ",":
                self._take()
                values.add("")
                continue
            value = self._identifier("identifier")
            self._check_value(value)
            values.add(value)
            following = self._peek()
            if following == ",":
                self._take()
            elif following != ")":
                raise bad_request(f"found '{following}', expected: ',' or ')' in {self._text!r}")
        if not values:
            raise self._fail("for 'in', 'notin' operators, values set can't be empty")
        return frozenset(values)

    def _check_key(self, key: str) -> None:
        problems = label_key_problems(key)
        if problems:
            raise self._fail(f'key: Invalid value: "{key}": {problems[0]}')

    def _check_value(self, value: str) -> None:
        problems = label_value_problems(value)
        if problems:
            raise self._fail(f'values[0][{value}]: Invalid value: "{value}": {problems[0]}')


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text:
        return LabelSelector()
    return _LabelParser(text).parse()


@dataclass(frozen=True, slots=True)
class FieldTerm:
    field: str
    value: str
    negated: bool

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field) == self.value) != self.negated


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[FieldTerm, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(term.matches(fields) for term in self.terms)

    def required_value(self, field: str) -> str | None:
        """The value ``field`` must equal to match, if one term pins it (for fast lookups)."""
        for term in self.terms:
            if term.field == field and not term.negated:
                return term.value
        return None


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise bad_request(f"invalid field selector: invalid escape sequence in {value!r}")
            out.append(value[i + 1])
            i += 2
            continue
        if char in ",=":
            raise bad_request(f"invalid field selector: unescaped {char!r} in {value!r}")
        out.append(char)
        i += 1
    return "".join(out)


def parse_field_selector(text: str | None, supported: Sequence[str]) -> FieldSelector:
    if not text:
        return FieldSelector()
    terms: list[FieldTerm] = []
    for raw in _split_unescaped(text, ","):
        if not raw:
            continue
        for operator in ("!=", "==", "="):
            field, found, value = raw.partition(operator)
            if found:
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{raw}'")
        negated = operator == "!="
        field = field.strip()
        if field not in supported:
            raise bad_request(f"field label not supported: {field}")
        terms.append(FieldTerm(field, _unescape(value), negated))
    return FieldSelector(tuple(terms))
