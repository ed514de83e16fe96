"""Query parameters and request options shared by the verbs, parsed as the API defines them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kproxy.devcluster.apiserver import errors
from kproxy.devcluster.apiserver.errors import ApiError
from kproxy.devcluster.apiserver.fields import unknown_fields
from kproxy.devcluster.apiserver.kinds.base import KindRules
from kproxy.devcluster.apiserver.objects import JsonObject
from kproxy.devcluster.apiserver.validation import invalid

# Boolean spellings the API accepts (Go's strconv.ParseBool).
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")
FIELD_VALIDATION = ("Ignore", "Strict", "Warn")


def flag(request: web.Request, name: str) -> bool | None:
    """A boolean parameter; None when absent or empty."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.bad_request(f"invalid boolean value {value!r} for parameter {name}")


def integer(request: web.Request, name: str) -> int | None:
    """An integer parameter; None when absent or empty."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f"invalid integer value {value!r} for parameter {name}") from None


def dry_run(request: web.Request, options: JsonObject | None = None) -> bool:
    """Whether a write is a dry run (``dryRun=All``, in the query or in DeleteOptions)."""
    values = request.query.getall("dryRun", [])
    if options and isinstance(options.get("dryRun"), list):
        values = [*values, *options["dryRun"]]
    for value in values:
        if value != "All":
            raise errors.bad_request(
                f'dryRun: Unsupported value: "{value}": supported values: "All"'
            )
    return bool(values)


def check_fields(request: web.Request, rules: KindRules, body: Any) -> list[str]:
    """Apply the request's fieldValidation to unknown fields: 400 when Strict, else the
    warnings to send (Warn, the default) or none (Ignore). The store drops them either way."""
    directive = request.query.get("fieldValidation") or "Warn"
    if directive not in FIELD_VALIDATION:
        raise errors.bad_request(
            f'fieldValidation: Unsupported value: "{directive}": supported values: '
            '"Ignore", "Strict", "Warn"'
        )
    if directive == "Ignore":
        return []
    unknown = [f'unknown field "{path}"' for path in unknown_fields(body, rules.known_fields)]
    if unknown and directive == "Strict":
        resource = rules.resource
        raise errors.bad_request(
            f'{resource.kind} in version "{resource.version}" cannot be handled as a '
            f"{resource.kind}: strict decoding error: {', '.join(unknown)}"
        )
    return unknown


def with_warnings(response: web.Response, warnings: list[str]) -> web.Response:
    for warning in warnings:
        text = "".join(_header_safe(char) for char in warning.replace('"', '\\"'))
        response.headers.add("Warning", '299 - "' + text + '"')
    return response


def _header_safe(char: str) -> str:
    """A character as a header may carry it: control characters (in field names of objects
    stored unvalidated) escaped, never a line break."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x20 or code == 0x7F else char


def list_options_error(field: str, value: Any, detail: str) -> ApiError:
    return errors.invalid("ListOptions", "meta.k8s.io", "", [invalid(field, value, detail)])
