"""Decode the text of an object file into its documents: a JSON stream or a YAML stream.

JSON is read by the stdlib's C-accelerated ``json`` decoder, YAML by libyaml's C loader
(``yaml.CSafeLoader``): PyYAML's pure-Python loader needs about a minute for 10,000 Services
and their EndpointSlices, the C paths well under a second for JSON and a few seconds for YAML.

Which decoder: a text whose first character (after whitespace and a UTF-8 byte-order mark) is
``{`` or ``[`` is tried as JSON first, as kubectl's decoder does. JSON is a subset of YAML, so
where the JSON decoder gives up (a YAML flow mapping such as ``{kind: List, items: []}``, or a
JSON document followed by ``---``) the text is read as YAML; only when both fail is it an
error, and then both decoders' messages are given.

Several JSON documents one after the other (``{...} {...}`` or one per line, what
``kubectl get -o json`` of several objects or ``jq -c`` print) are a stream of documents, as
``kubectl apply -f`` reads them; a YAML stream separates its documents with ``---``.

Duplicate keys: in both decoders the last occurrence of a key wins, which is also what the
API server keeps (its default field validation, ``Warn``, persists the last of duplicate
fields). A ``null`` document (an empty YAML document, a JSON ``null``) is dropped.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import yaml

log = logging.getLogger(__name__)

# JSON's own whitespace (RFC 8259); YAML's differs only in what it allows where.
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LEADING = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\n\r]*")

_warned_pure_loader = False


class DecodeError(ValueError):
    """The text is neither a JSON nor a YAML stream; the message says where and why."""


def looks_like_json(data: bytes) -> bool:
    """Whether the first significant character opens a JSON object or array."""
    start = _LEADING.match(data)
    end = start.end() if start is not None else 0
    return data[end:end + 1] in (b"{", b"[")


def decode_documents(data: bytes) -> list[Any]:
    """The documents of ``data`` (UTF-8), ``null`` ones dropped.

    Raises UnicodeDecodeError for text that is not UTF-8, DecodeError for a syntax error.
    """
    text = data.decode("utf-8-sig")  # the check for UTF-8; JSON decodes from this text
    if looks_like_json(data):
        del data  # the caller's reference is the only other one; the text is what is parsed
        try:
            return [document for document in json_documents(text) if document is not None]
        except json.JSONDecodeError as json_error:
            json_problem = json_error_text(json_error)
        try:
            return yaml_documents(text)
        except yaml.YAMLError as yaml_error:
            raise DecodeError(f"not valid JSON ({json_problem}) nor YAML "
                              f"({yaml_error_text(yaml_error)})") from yaml_error
    del text  # libyaml reads the bytes themselves
    try:
        return yaml_documents(data)
    except yaml.YAMLError as error:
        raise DecodeError(f"not valid YAML: {yaml_error_text(error)}") from error


def json_documents(text: str) -> list[Any]:
    """Every JSON value of ``text``, one after the other, separated by optional whitespace."""
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    position = _JSON_WHITESPACE.match(text)
    index = position.end() if position is not None else 0
    while index < len(text):
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
        position = _JSON_WHITESPACE.match(text, index)
        index = position.end() if position is not None else index
    return documents


def yaml_documents(source: str | bytes) -> list[Any]:
    loader = yaml_loader()
    return [document for document in yaml.load_all(source, Loader=loader)
            if document is not None]


def yaml_loader() -> type[yaml.SafeLoader] | type[yaml.CSafeLoader]:
    """libyaml's safe loader; PyYAML's pure-Python one (with one warning) where PyYAML was
    built without libyaml."""
    global _warned_pure_loader
    fast: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        return fast
    if not _warned_pure_loader:
        _warned_pure_loader = True
        log.warning("--from-file: PyYAML has no libyaml (yaml.CSafeLoader); reading YAML with "
                    "its pure-Python loader, about 15 times slower (JSON is not affected)")
    return yaml.SafeLoader


def json_error_text(error: json.JSONDecodeError) -> str:
    return f"line {error.lineno} column {error.colno}: {error.msg}"


def yaml_error_text(error: yaml.YAMLError) -> str:
    """``line L column C: problem`` (1-based, as editors count), and the construct it was in."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        text = f"line {mark.line + 1} column {mark.column + 1}: {error.problem}"
        if error.context and error.context_mark is not None:
            context = error.context_mark
            text += f" ({error.context} at line {context.line + 1} column {context.column + 1})"
        return text
    if isinstance(error, yaml.reader.ReaderError):
        return f"byte {error.position}: {error.reason}"
    return str(error)
