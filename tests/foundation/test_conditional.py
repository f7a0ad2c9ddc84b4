"""The precondition rules of `services.fhir.conditional`, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.fhir.conditional import (
    entry_none_match,
    modified_since,
    none_exist_query,
    none_match,
    not_modified,
    required_version,
    version_from_etag,
)
from services.fhir.outcome import BadRequest

CURRENT = 'W/"3"'


@pytest.mark.parametrize("header", ['W/"3"', '"3"', '  W/"3"  ', '*', 'W/"2", W/"3"', '"1","3"', 'W/"2" ,*'])
def test_if_none_match_names_the_current_version(header: str) -> None:
    assert none_match(header, CURRENT)


@pytest.mark.parametrize("header", [None, "", 'W/"2"', '"30"', '3', 'W/3', 'W/"3', 'garbage', ', ,', '"3" x'])
def test_if_none_match_that_names_another_version_or_nothing_readable(header: str | None) -> None:
    assert not none_match(header, CURRENT)


def test_weak_comparison_holds_for_strong_current_tags_and_digests() -> None:
    assert none_match('W/"abc"', '"abc"')
    assert none_match('"abc"', 'W/"abc"')
    assert not none_match('W/"abd"', 'W/"abc"')


def test_a_comma_inside_a_quoted_tag_belongs_to_the_tag() -> None:
    assert none_match('"a,b"', '"a,b"')
    assert not none_match('"a,b"', '"a"')
    assert none_match('"x", "a,b"', 'W/"a,b"')


MODIFIED = datetime(2024, 5, 1, 10, 30, 15, 250000, tzinfo=UTC)


def test_if_modified_since_compares_to_the_second() -> None:
    assert not modified_since("Wed, 01 May 2024 10:30:15 GMT", MODIFIED)
    assert not modified_since("Wed, 01 May 2024 11:00:00 GMT", MODIFIED)
    assert modified_since("Wed, 01 May 2024 10:30:14 GMT", MODIFIED)


@pytest.mark.parametrize("header", [None, "", "yesterday", "2024-05-01", "Wed, 01 May 2024 10:30:15"])
def test_an_unreadable_if_modified_since_is_ignored(header: str | None) -> None:
    assert modified_since(header, MODIFIED)


def test_if_none_match_decides_over_if_modified_since() -> None:
    later = "Thu, 02 May 2024 00:00:00 GMT"
    assert not_modified(None, later, CURRENT, MODIFIED)
    assert not not_modified('W/"2"', later, CURRENT, MODIFIED)
    assert not_modified('W/"3"', "Tue, 30 Apr 2024 00:00:00 GMT", CURRENT, MODIFIED)
    assert not not_modified(None, later, CURRENT, None)
    assert not not_modified(None, None, CURRENT, MODIFIED)


@pytest.mark.parametrize(("header", "version"), [('W/"3"', 3), ('"3"', 3), ("3", 3), (' W/"12" ', 12), (None, None)])
def test_if_match_versions(header: str | None, version: int | None) -> None:
    assert version_from_etag(header) == version


@pytest.mark.parametrize("header", ["", "*", 'W/"a"', 'W/"1", W/"2"'])
def test_an_unreadable_if_match_is_a_400_naming_the_header(header: str) -> None:
    with pytest.raises(BadRequest) as raised:
        version_from_etag(header, name="Bundle.entry[0].request.ifMatch")
    assert raised.value.issues[0].expression == ("Bundle.entry[0].request.ifMatch",)


def test_a_required_if_match_is_a_400_when_absent() -> None:
    assert required_version('W/"4"', "needed") == 4
    with pytest.raises(BadRequest) as raised:
        required_version(None, "needed")
    assert raised.value.issues[0].code == "required"
    assert raised.value.issues[0].expression == ("If-Match",)


def test_an_entry_if_none_match_takes_stars_lists_and_version_tags() -> None:
    name = "Bundle.entry[1].request.ifNoneMatch"
    assert entry_none_match("*", 3, name=name)
    assert entry_none_match('W/"3"', 3, name=name)
    assert entry_none_match("3", 3, name=name)
    assert entry_none_match('W/"1", W/"3"', 3, name=name)
    assert not entry_none_match('W/"2"', 3, name=name)
    with pytest.raises(BadRequest) as raised:
        entry_none_match('W/"x"', 3, name=name)
    assert raised.value.issues[0].expression == (name,)


def test_if_none_exist_takes_a_query_with_or_without_the_type() -> None:
    assert none_exist_query("Patient?identifier=a|b&name=x") == [("identifier", "a|b"), ("name", "x")]
    assert none_exist_query("identifier=a%7Cb") == [("identifier", "a|b")]
    assert none_exist_query("") == []
