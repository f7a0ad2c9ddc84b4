"""Which of a patient's allergies a preparation contains: one lookup per allergy, not one regex per pair.

A preparation names itself and its ingredients by code and by text. An allergy
matches an entry when its (system, code) is among the entry's codings, when it has
a bare code equal to one of them, or when its normalised name occurs in the entry's
normalised text as whole words ('camphor' in 'natural camphor', not in 'camphorated';
hyphens and spaces alike). Comparing every allergy with every text by regex made a
long allergy list cost seconds; instead each preparation's `Ingredients` lists every
phrase of its texts that such a name could equal, so matching is a dictionary lookup.
A preparation's index depends only on its content: it is built once and kept, under a
digest of the Medication, in a small cache bounded in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from services.careplan.intake import Allergy
from services.careplan.knowledge import codings
from services.fhir.bytecache import ByteCache, digest
from services.fhir.searchparams import normalise


def _word_char(char: str) -> bool:
    return "a" <= char <= "z" or "0" <= char <= "9"


def phrases(name: str) -> Iterable[str]:
    """Every substring of `name` that starts and ends at a word boundary (a match of the whole-word rule)."""
    starts = [i for i in range(len(name)) if i == 0 or not _word_char(name[i - 1])]
    ends = [j for j in range(1, len(name) + 1) if j == len(name) or not _word_char(name[j])]
    return (name[i:j] for i in starts for j in ends if j > i)


def comparable(text: str) -> str:
    """The form names are compared in: normalised (case, accents), hyphens as spaces."""
    return normalise(text).replace("-", " ")


@dataclass(frozen=True)
class Allergen:
    """An allergy as it is looked up: built once per plan, whatever the number of preparations."""

    code: tuple[str, str] | None
    bare_code: str | None
    phrase: str
    display: str | None


def allergens(allergies: Sequence[Allergy]) -> list[Allergen]:
    return [Allergen(code=(allergy.system or "", allergy.code) if allergy.code else None,
                     bare_code=allergy.code if allergy.code and not allergy.system else None,
                     phrase=allergy.name.replace("-", " "), display=allergy.code) for allergy in allergies]


@dataclass(frozen=True)
class Ingredients:
    """A preparation's names (the product first, then each ingredient's text and displays), and where each
    code and phrase first occurs among them."""

    texts: tuple[str, ...]
    by_code: dict[tuple[str, str], int]
    by_bare_code: dict[str, int]
    by_phrase: dict[str, int]

    def first_match(self, allergen: Allergen) -> str | None:
        """The first name (in order) the allergen matches: by code (then the name, or the code itself) or by
        phrase (then the name)."""
        by_code = min((i for i in (self.by_code.get(allergen.code) if allergen.code else None,
                                   self.by_bare_code.get(allergen.bare_code) if allergen.bare_code else None)
                       if i is not None), default=None)
        by_phrase = self.by_phrase.get(allergen.phrase) if allergen.phrase else None
        if by_code is not None and (by_phrase is None or by_code <= by_phrase):
            return self.texts[by_code] or allergen.display
        return self.texts[by_phrase] if by_phrase is not None else None


def ingredients(medication: dict[str, object]) -> Ingredients:
    code = medication.get("code") or {}
    assert isinstance(code, dict)
    entries: list[tuple[str, list[dict[str, str]]]] = [(code.get("text", ""), codings(code))]
    listed = medication.get("ingredient")
    for ingredient in listed if isinstance(listed, list) else []:
        concept = ingredient.get("itemCodeableConcept") or {}
        texts = [concept.get("text", "")] + [c.get("display", "") for c in codings(concept)]
        entries.extend((text, codings(concept)) for text in texts if text)
    by_code: dict[tuple[str, str], int] = {}
    by_bare_code: dict[str, int] = {}
    by_phrase: dict[str, int] = {}
    for i, (text, entry_codings) in enumerate(entries):
        for coding in entry_codings:
            by_code.setdefault((coding.get("system", ""), coding.get("code", "")), i)
            by_bare_code.setdefault(coding.get("code", ""), i)
        for phrase in phrases(comparable(text)):
            by_phrase.setdefault(phrase, i)
    return Ingredients(tuple(text for text, _ in entries), by_code, by_bare_code, by_phrase)


class IngredientIndex:
    """`Ingredients` of each preparation seen, by a digest of the Medication (catalog content, so a handful)."""

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.cache: ByteCache[Ingredients] = ByteCache("ingredients", max_bytes)

    def of(self, medication: dict[str, object]) -> Ingredients:
        content = orjson.dumps(medication, option=orjson.OPT_SORT_KEYS)
        key = digest(content)
        found = self.cache.get(key)
        if found is None:
            found = ingredients(medication)
            self.cache.put(key, found, 4 * len(content) + 64 * len(found.by_phrase))
        return found


INGREDIENTS = IngredientIndex()


def first_allergen(medication: dict[str, object], patient: Sequence[Allergen]) -> str | None:
    """The ingredient (or product) the patient is allergic to, for the first allergy (in order) that matches."""
    found = INGREDIENTS.of(medication)
    for allergen in patient:
        match = found.first_match(allergen)
        if match is not None:
            return match
    return None
