"""The catalog's resource types and their search parameters (R4 names and expressions where R4 has them)."""

from __future__ import annotations

from services.fhir.searchparams import SearchParamDef

CATALOG_TYPES = ("ActivityDefinition", "PlanDefinition", "Medication", "MedicationKnowledge", "Questionnaire",
                 "CodeSystem", "ValueSet", "StructureDefinition")
"""StructureDefinition: the definitions of the catalog's own extensions (delivered-preparation, ...)."""

_KNOWLEDGE_ARTIFACT = ("ActivityDefinition", "PlanDefinition", "Questionnaire", "CodeSystem", "ValueSet",
                       "StructureDefinition")


def _canonical_params(resource_type: str) -> dict[str, SearchParamDef]:
    return {
        "url": SearchParamDef("url", "uri", f"{resource_type}.url", "The canonical URL"),
        "version": SearchParamDef("version", "token", f"{resource_type}.version", "The business version"),
        "status": SearchParamDef("status", "token", f"{resource_type}.status", "draft | active | retired | unknown"),
        "name": SearchParamDef("name", "string", f"{resource_type}.name", "Computer-friendly name"),
        "title": SearchParamDef("title", "string", f"{resource_type}.title", "Human-friendly title"),
        "description": SearchParamDef("description", "string", f"{resource_type}.description", "Description"),
    }


SEARCH_PARAMS: dict[str, dict[str, SearchParamDef]] = {t: _canonical_params(t) for t in _KNOWLEDGE_ARTIFACT}

SEARCH_PARAMS["ActivityDefinition"] |= {
    "code": SearchParamDef("code", "token", "ActivityDefinition.code", "What the activity is"),
    "topic": SearchParamDef("topic", "token", "ActivityDefinition.topic", "Topics of the activity"),
    "kind": SearchParamDef("kind", "token", "ActivityDefinition.kind", "Kind of request resource it creates"),
    "product": SearchParamDef(
        "product", "reference",
        "ActivityDefinition.product.ofType(Reference) | ActivityDefinition.extension"
        ".where(url='https://fhir.cicatrix.org/StructureDefinition/delivered-preparation').value",
        "The preparations the activity delivers", targets=("Medication",)),
}
SEARCH_PARAMS["PlanDefinition"] |= {
    "topic": SearchParamDef("topic", "token", "PlanDefinition.topic", "Topics of the protocol"),
    "type": SearchParamDef("type", "token", "PlanDefinition.type", "clinical-protocol | order-set | eca-rule"),
    "context": SearchParamDef("context", "token", "PlanDefinition.useContext.value.ofType(CodeableConcept)",
                              "A use context of the protocol (e.g. the scar type it applies to)"),
    "definition": SearchParamDef(
        "definition", "reference",
        "(PlanDefinition.action | PlanDefinition.action.repeat(action)).definitionCanonical",
        "Activities and plans the protocol's actions point to",
        targets=("ActivityDefinition", "PlanDefinition", "Questionnaire")),
}
SEARCH_PARAMS["StructureDefinition"] |= {
    "type": SearchParamDef("type", "uri", "StructureDefinition.type", "The type defined or constrained"),
    "kind": SearchParamDef("kind", "token", "StructureDefinition.kind", "primitive-type | complex-type | resource"),
}
SEARCH_PARAMS["Questionnaire"] |= {
    "code": SearchParamDef("code", "token", "Questionnaire.item.code", "Codes of the questions"),
}
SEARCH_PARAMS["CodeSystem"] |= {
    "code": SearchParamDef("code", "token", "CodeSystem.concept.repeat(concept).code", "A code in the system"),
}
SEARCH_PARAMS["ValueSet"] |= {
    "code": SearchParamDef("code", "token", "ValueSet.expansion.contains.code | ValueSet.compose.include.concept.code",
                           "A code listed in the value set"),
    "reference": SearchParamDef("reference", "uri", "ValueSet.compose.include.system",
                                "A code system the value set includes"),
}
SEARCH_PARAMS["Medication"] = {
    "code": SearchParamDef("code", "token", "Medication.code", "Codes of the medication"),
    "status": SearchParamDef("status", "token", "Medication.status", "active | inactive | entered-in-error"),
    "form": SearchParamDef("form", "token", "Medication.form", "Dose form"),
    "ingredient-code": SearchParamDef("ingredient-code", "token",
                                      "Medication.ingredient.item.ofType(CodeableConcept)", "An ingredient"),
    "identifier": SearchParamDef("identifier", "token", "Medication.identifier", "Business identifier"),
}
SEARCH_PARAMS["MedicationKnowledge"] = {
    "code": SearchParamDef("code", "token", "MedicationKnowledge.code", "Codes of the medication"),
    "status": SearchParamDef("status", "token", "MedicationKnowledge.status", "active | inactive | entered-in-error"),
    "doseform": SearchParamDef("doseform", "token", "MedicationKnowledge.doseForm", "Dose form"),
    "ingredient-code": SearchParamDef("ingredient-code", "token",
                                      "MedicationKnowledge.ingredient.item.ofType(CodeableConcept)", "An ingredient"),
    "classification": SearchParamDef("classification", "token",
                                     "MedicationKnowledge.productType | "
                                     "MedicationKnowledge.medicineClassification.classification",
                                     "Class of the medication (e.g. retinoid)"),
    "associated-medication": SearchParamDef(
        "associated-medication", "reference", "MedicationKnowledge.associatedMedication",
        "The Medication this knowledge describes", targets=("Medication",)),
}

SORTABLE = ("name", "title", "url", "version", "status")
