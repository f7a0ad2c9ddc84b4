"""Allergy matching by index gives what comparing each allergy with each name by regex gave, in one lookup."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from services.careplan.allergens import allergens, comparable, first_allergen, ingredients
from services.careplan.intake import Allergy
from services.fhir.searchparams import normalise

WORDS = st.sampled_from(["camphor", "camphorated", "onion", "extract", "natural", "vitamin", "c", "a-b", "ö",
                         "(x)", "-", " ", "5%", "Camphor", "Zwiebel-Extrakt"])
TEXT = st.lists(WORDS, max_size=4).map(" ".join)


def regex_match(allergen: str, name: str) -> bool:
    """The whole-word rule as a regex: the definition the index must reproduce."""
    allergen, name = allergen.replace("-", " "), name.replace("-", " ")
    return bool(allergen) and re.search(rf"(?<![a-z0-9]){re.escape(allergen)}(?![a-z0-9])", name) is not None


@settings(max_examples=300, deadline=None)
@given(allergy=TEXT, name=TEXT)
def test_a_name_matches_by_index_exactly_when_the_whole_word_regex_matches(allergy, name):
    medication = {"resourceType": "Medication", "code": {"text": name}}
    expected = name if regex_match(normalise(allergy), comparable(name)) and normalise(allergy) else None
    assert first_allergen(medication, allergens([Allergy(None, None, allergy)])) == expected


def test_codes_match_before_later_names_and_the_first_allergy_in_order_wins():
    medication = {"resourceType": "Medication", "code": {"text": "Scar gel"}, "ingredient": [
        {"itemCodeableConcept": {"text": "Onion extract",
                                 "coding": [{"system": "http://snomed.info/sct", "code": "227313005"}]}},
        {"itemCodeableConcept": {"text": "Natural camphor"}}]}
    patient = allergens([Allergy(None, None, "camphor"), Allergy("http://snomed.info/sct", "227313005", None)])
    assert first_allergen(medication, patient) == "Natural camphor"
    assert first_allergen(medication, patient[1:]) == "Onion extract"
    assert first_allergen(medication, allergens([Allergy(None, "227313005", None)])) == "Onion extract"
    assert first_allergen(medication, allergens([Allergy(None, None, "camphorated")])) is None
    assert ingredients(medication).texts == ("Scar gel", "Onion extract", "Natural camphor")
