"""Reading a ``KubeProxyConfiguration`` file: bounded, safely parsed, strictly checked."""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from kproxy.config.errors import ConfigError
from kproxy.config.fileschema import SchemaError, Value, check_document

MAX_CONFIG_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileSettings:
    """The fields a config file sets (non-null), by dotted path, with typed accessors.

    Values were type-checked against the schema, so the accessors only narrow types.
    """

    path: str
    values: dict[str, Value]

    def has(self, field: str) -> bool:
        return field in self.values

    def string(self, field: str) -> str | None:
        value = self.values.get(field)
        return value if isinstance(value, str) else None

    def boolean(self, field: str) -> bool | None:
        value = self.values.get(field)
        return value if isinstance(value, bool) else None

    def integer(self, field: str) -> int | None:
        value = self.values.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def nanoseconds(self, field: str) -> int | None:
        return self.integer(field)

    def strings(self, field: str) -> tuple[str, ...] | None:
        value = self.values.get(field)
        if not isinstance(value, tuple):
            return None
        return tuple(str(item) for item in value)

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(field, message, source=self.path)


def load_config_file(path: str) -> FileSettings:
    """Read, parse (YAML, or JSON when it starts with ``{``) and check a config file."""
    return parse_config_text(read_config_bytes(path), path)


def read_config_bytes(path: str) -> bytes:
    # Read one byte past the limit instead of trusting stat(): the path may be a pipe or
    # a file that is still growing.
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError("--config", f"cannot read {path}: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            "", f"file is larger than the {MAX_CONFIG_FILE_BYTES // 1024} KiB limit", source=path
        )
    return data


def parse_config_text(data: bytes, path: str) -> FileSettings:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("", f"not UTF-8 text (byte {error.start})", source=path) from None
    document = _decode(text, path)
    if document is None:
        raise ConfigError("", "file is empty", source=path)
    try:
        values = check_document(document)
    except SchemaError as error:
        raise ConfigError(error.path, error.message, source=path) from None
    return FileSettings(path, values)


def _decode(text: str, path: str) -> object:
    try:
        if text.lstrip().startswith("{"):
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as error:
        message = f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
    except yaml.MarkedYAMLError as error:
        message = f"invalid YAML{_position(error)}: {error.problem or error.context}"
    except yaml.YAMLError as error:
        message = f"invalid YAML: {error}"
    except RecursionError:
        message = "nested too deeply"
    raise ConfigError("", message, source=path)


def _position(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
