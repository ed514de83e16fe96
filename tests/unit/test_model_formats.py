"""The name and label syntaxes shared by the model and the dev API server."""

from __future__ import annotations

import pytest

from kproxy.model.formats import (
    is_dns1035_label,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_iana_svc_name,
    is_label_value,
    is_qualified_name,
)
from kproxy.model.types import Rejection, RejectReason, escape_for_log

HOSTILE = ["", "a\n", "a\x00", "a\x1b[0m", "a b", "ä", "a\u2028", 5, None, ["a"]]


@pytest.mark.parametrize("value", ["a", "a-b", "0", "9abc", "a" * 63, "a1-b2"])
def test_dns1123_labels(value: str) -> None:
    assert is_dns1123_label(value)


@pytest.mark.parametrize("value", [*HOSTILE, "A", "-a", "a-", "a.b", "a_b", "a" * 64])
def test_not_dns1123_labels(value: object) -> None:
    assert not is_dns1123_label(value)


# apimachinery bounds the whole subdomain (253), not each of its labels.
@pytest.mark.parametrize("value", ["a", "a.b", "a-b.c-d.e", "1.2.3", "a" * 63 + "." + "b" * 63,
                                   ".".join(["a" * 63] * 3) + "." + "b" * 61, "a" * 64])
def test_dns1123_subdomains(value: str) -> None:
    assert is_dns1123_subdomain(value)


@pytest.mark.parametrize("value", [*HOSTILE, "a..b", ".a", "a.", "A.b", "a_b.c", "a" * 254,
                                   ".".join(["a" * 63] * 4)])
def test_not_dns1123_subdomains(value: object) -> None:
    assert not is_dns1123_subdomain(value)


@pytest.mark.parametrize(("value", "valid"), [("web", True), ("w-1", True), ("1web", False),
                                              ("-w", False), ("w" * 63, True),
                                              ("w" * 64, False), ("Web", False)])
def test_dns1035_labels_start_with_a_letter(value: str, valid: bool) -> None:
    assert is_dns1035_label(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("http", True), ("h-t-t-p", True), ("a" * 15, True), ("a" * 16, False), ("8080", False),
     ("1a", True), ("-http", False), ("http-", False), ("ht--tp", False), ("HTTP", False),
     ("ht_tp", False), ("", False), ("http\n", False)],
)
def test_iana_service_names(value: str, valid: bool) -> None:
    assert is_iana_svc_name(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("app", True), ("App.Name_1-x", True), ("example.com/app", True), ("a" * 63, True),
     ("a" * 64, False), ("/app", False), ("example.com/", False), ("Example.com/app", False),
     ("a/b/c", False), ("-app", False), ("app_", False), ("", False), ("app\n", False),
     ("kubernetes.io/service-name", True), ("topology.kubernetes.io/zone", True)],
)
def test_qualified_names(value: str, valid: bool) -> None:
    assert is_qualified_name(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("", True), ("v", True), ("V.a_l-1", True), ("v" * 63, True), ("v" * 64, False),
     ("-v", False), ("v.", False), ("a b", False), ("v\x00", False), ("v\n", False)],
)
def test_label_values(value: str, valid: bool) -> None:
    assert is_label_value(value) is valid


def test_answers_are_memoised_but_bounded() -> None:
    for index in range(60_000):  # beyond the cache bound: it starts over, answers stay right
        assert is_dns1123_label(f"n{index}")
    assert not is_dns1123_label("N0")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [("plain text", "plain text"), ("a\nb", "a\\nb"), ("\x00", "\\x00"),
     ("\x1b[31m", "\\x1b[31m"), ("a\u2028b", "a\\u2028b"), ("\r\t", "\\r\\t"),
     ("ünïcödé", "ünïcödé")],
)
def test_log_escaping_leaves_one_printable_line(text: str, escaped: str) -> None:
    assert escape_for_log(text) == escaped
    assert escape_for_log(text).isprintable()


def test_a_rejection_prints_as_one_escaped_line_with_its_reason_code() -> None:
    rejection = Rejection("Service", "ns\n", "web\x00", "metadata.name", "bad\x1b", True,
                          RejectReason.INVALID_NAME)
    assert str(rejection) == (
        "Service ns\\n/web\\x00: skipped object metadata.name: bad\\x1b [invalid_name]"
    )
