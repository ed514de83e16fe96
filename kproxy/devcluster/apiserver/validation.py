"""Field errors and the name/label syntax rules that every API object is checked against.

Field errors render like the real server's (``spec.ports[0].port: Invalid value: 0: must be
between 1 and 65535, inclusive``): tools and people grep for these shapes.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, TypeGuard

from kproxy.model.formats import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    IANA_SVC_NAME_CHARS,
    QUALIFIED_NAME_MAX_LENGTH,
    QUALIFIED_NAME_PART,
    is_label_value,
)


class ErrorType(enum.Enum):
    # value: (cause reason, rendered prefix)
    REQUIRED = ("FieldValueRequired", "Required value")
    INVALID = ("FieldValueInvalid", "Invalid value")
    DUPLICATE = ("FieldValueDuplicate", "Duplicate value")
    NOT_SUPPORTED = ("FieldValueNotSupported", "Unsupported value")
    FORBIDDEN = ("FieldValueForbidden", "Forbidden")
    TOO_MANY = ("FieldValueTooMany", "Too many")


_NO_VALUE = object()


def render_value(value: Any) -> str:
    """A value as Go's ``%#v`` would show it in an error: strings quoted, numbers bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class FieldError:
    type: ErrorType
    field: str
    value: Any = _NO_VALUE
    detail: str = ""

    def _body(self) -> str:
        prefix = self.type.value[1]
        if self.type in (ErrorType.REQUIRED, ErrorType.FORBIDDEN, ErrorType.TOO_MANY):
            return f"{prefix}: {self.detail}" if self.detail else prefix
        text = prefix
        if self.value is not _NO_VALUE:
            text += f": {render_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def render(self) -> str:
        return f"{self.field}: {self._body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.type.value[0], "message": self._body(), "field": self.field}


def required(field: str, detail: str = "") -> FieldError:
    return FieldError(ErrorType.REQUIRED, field, detail=detail)


def invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(ErrorType.INVALID, field, value, detail)


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError(ErrorType.DUPLICATE, field, value)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError(ErrorType.FORBIDDEN, field, detail=detail)


def not_supported(field: str, value: Any, supported: list[str]) -> FieldError:
    choices = ", ".join(json.dumps(choice) for choice in sorted(supported))
    return FieldError(ErrorType.NOT_SUPPORTED, field, value, f"supported values: {choices}")




def dns_label_problems(value: str) -> list[str]:
    """RFC 1123 label: lower-case alphanumerics and '-', at most 63 characters."""
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not DNS1123_LABEL.fullmatch(value):
        problems.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
            "or '-', and must start and end with an alphanumeric character"
        )
    return problems


def dns_1035_label_problems(value: str) -> list[str]:
    """RFC 1035 label (Service names): like a 1123 label but starting with a letter."""
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not DNS1035_LABEL.fullmatch(value):
        problems.append(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character"
        )
    return problems


def dns_subdomain_problems(value: str) -> list[str]:
    """RFC 1123 subdomain: dot-separated labels, at most 253 characters."""
    problems = []
    if len(value) > 253:
        problems.append("must be no more than 253 characters")
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return problems


def label_key_problems(key: str) -> list[str]:
    """A label key: an optional DNS subdomain prefix and '/', then a 63-character name."""
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash:
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems.extend("prefix part " + p for p in dns_subdomain_problems(prefix))
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > QUALIFIED_NAME_MAX_LENGTH or not QUALIFIED_NAME_PART.fullmatch(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (at most 63 characters)"
        )
    return problems


def label_value_problems(value: str) -> list[str]:
    if not is_label_value(value):
        return [
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character "
            "(at most 63 characters)"
        ]
    return []


def iana_service_name_problems(value: str) -> list[str]:
    """A named port (``targetPort: http``): at most 15 characters, at least one letter."""
    problems = []
    if len(value) > 15:
        problems.append("must be no more than 15 characters")
    if (
        not IANA_SVC_NAME_CHARS.fullmatch(value)
        or value.startswith("-")
        or value.endswith("-")
    ):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in value:
        problems.append("must not contain consecutive hyphens")
    if not any(c.isalpha() for c in value):
        problems.append("must contain at least one letter (a-z)")
    return problems


def validate_labels(labels: Any, field: str) -> list[FieldError]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [invalid(field, labels, "must be a map of strings")]
    errors = []
    for key, value in labels.items():
        for problem in label_key_problems(str(key)):
            errors.append(invalid(field, key, problem))
        if not isinstance(value, str):
            errors.append(invalid(f"{field}[{key}]", value, "must be a string"))
            continue
        for problem in label_value_problems(value):
            errors.append(invalid(field, value, problem))
    return errors


def validate_annotations(annotations: Any, field: str) -> list[FieldError]:
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [invalid(field, annotations, "must be a map of strings")]
    errors = []
    for key, value in annotations.items():
        for problem in label_key_problems(str(key)):
            errors.append(invalid(field, key, problem))
        if not isinstance(value, str):
            errors.append(invalid(f"{field}[{key}]", value, "must be a string"))
    return errors


def parse_ip(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A canonical IP address, or None: leading zeros and zone suffixes are rejected."""
    if not isinstance(text, str) or "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
