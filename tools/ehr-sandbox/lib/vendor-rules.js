'use strict';
/**
 * Vendor rules: what a real EHR refuses in the content of a create or update although it is valid R4. A profile
 * attaches them to a resource type (profiles.js); capabilities.js runs them after the capability gate and answers
 * a broken one with an OperationOutcome naming the rule and the page it comes from (422, or 400 for a missing
 * If-Match), logged as a `vendor-rule` refusal.
 *
 * Search rules (which parameters a search must combine) are checked the same way after the declared-parameter
 * check, answered 400.
 *
 * A rule: { id, on: ['create' | 'update'...], sources: { create?: url, update?: url }, status?, code?,
 *           check(resource, { action, ifMatch }) -> undefined when kept, else what is wrong (no PHI: names of
 *           elements and codes only) }
 */

// Oracle Health Millennium R4, DocumentReference create and update.
const MILLENNIUM_CREATE =
  'https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-documentreference-post.html';
const MILLENNIUM_UPDATE =
  'https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-documentreference-id-put.html';
const MILLENNIUM_BOTH = { create: MILLENNIUM_CREATE, update: MILLENNIUM_UPDATE };

/** "The following MIME types are supported" on both pages; parameters such as charset are not part of the type. */
const MILLENNIUM_MIME_TYPES = new Set([
  'application/pdf',
  'text/plain',
  'text/richtext',
  'text/rtf',
  'text/html',
  'application/xml',
  'application/xhtml+xml',
]);

const LOINC = 'http://loinc.org';

const MILLENNIUM_DOCUMENT_REFERENCE_RULES = Object.freeze([
  {
    // Update page: header parameter "If-Match (required): The current version of the DocumentReference resource."
    id: 'millennium-if-match',
    on: ['update'],
    sources: MILLENNIUM_BOTH,
    status: 400,
    code: 'required',
    check: (_resource, { ifMatch }) => (ifMatch ? undefined : 'an update needs If-Match with the current version'),
  },
  {
    // Both pages, content: "Must contain only one entry."
    id: 'millennium-one-content',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ content = [] }) =>
      content.length === 1 ? undefined : `content has ${content.length} entries; exactly one is accepted`,
  },
  {
    // Both pages: "The following MIME types are supported: ..." (see MILLENNIUM_MIME_TYPES). A missing contentType
    // is not documented either way; the strict reading refuses it.
    id: 'millennium-mime-type',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ content = [] }) => {
      const types = content.map(({ attachment }) => (attachment?.contentType ?? '').split(';')[0].trim().toLowerCase());
      const refused = types.find((type) => !MILLENNIUM_MIME_TYPES.has(type));
      return refused === undefined
        ? undefined
        : `content.attachment.contentType "${refused}" is not one of ${[...MILLENNIUM_MIME_TYPES].join(', ')}`;
    },
  },
  {
    // Both pages: "All provided dates must have a time component."
    id: 'millennium-date-time',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: (resource) => {
      const dates = [
        ['date', resource.date],
        ['context.period.start', resource.context?.period?.start],
        ['context.period.end', resource.context?.period?.end],
        ...(resource.content ?? []).map(({ attachment }, i) => [
          `content[${i}].attachment.creation`,
          attachment?.creation,
        ]),
      ];
      const dateOnly = dates.find(([, value]) => typeof value === 'string' && !value.includes('T'));
      return dateOnly ? `${dateOnly[0]} has no time component` : undefined;
    },
  },
  {
    // Both pages, status: "This operation only supports current."
    id: 'millennium-status-current',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ status }) => (status === 'current' ? undefined : `status "${status}" is not "current"`),
  },
  {
    // Both pages, docStatus: "This operation only supports final." Whether it may be left out is not documented;
    // the strict reading requires it.
    id: 'millennium-doc-status-final',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ docStatus }) => (docStatus === 'final' ? undefined : `docStatus "${docStatus ?? ''}" is not "final"`),
  },
  {
    // Both pages, subject: "subject must be a Patient reference."
    id: 'millennium-subject-patient',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: subjectIsPatient,
  },
  {
    // Both pages, type: "The type must include a LOINC or a proprietary coding." A proprietary coding means a code
    // of the site's Millennium code set 72, which only that site can know; the sandbox takes LOINC only.
    id: 'millennium-type-loinc',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ type }) =>
      type?.coding?.some((coding) => coding.system === LOINC && coding.code) ? undefined : 'type has no LOINC coding',
  },
  {
    // Both pages, author: "Must contain only practitioner references"; optional for system access on create,
    // "author (required)" on update.
    id: 'millennium-author-practitioner',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ author = [] }, { action }) => {
      if (action === 'update' && author.length === 0) {
        return 'an update needs author';
      }
      return author.every((who) => isReferenceTo('Practitioner', who)) ? undefined : 'author is not only Practitioners';
    },
  },
  {
    // Both pages, authenticator: "If set, must be a practitioner reference".
    id: 'millennium-authenticator-practitioner',
    on: ['create', 'update'],
    sources: MILLENNIUM_BOTH,
    check: ({ authenticator }) =>
      authenticator === undefined || isReferenceTo('Practitioner', authenticator)
        ? undefined
        : 'authenticator is not a Practitioner reference',
  },
]);

// Oracle Health Millennium R4 searches: the combinations of parameters each search requires. A search rule:
// { id, source, check(params: Map name -> [values]) -> undefined when kept, else what is wrong }.
const MILLENNIUM_CAREPLAN_SEARCH =
  'https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-careplan-get.html';
const MILLENNIUM_DOCUMENT_REFERENCE_SEARCH =
  'https://fhir.cerner.com/millennium/r4/foundation/documents/document-reference/';

/** Parameters that never count as criteria. */
const RESULT_ONLY = new Set(['_count', '_format']);

function criteria(params) {
  return [...params.keys()].filter((name) => !RESULT_ONLY.has(name));
}

const MILLENNIUM_CAREPLAN_SEARCH_RULES = Object.freeze([
  {
    // "_id ... required if the patient and category parameters are not used. May not be provided with any other
    // parameters except for _revinclude"; "category ... required if the _id parameter is not used. Only supports
    // the assess-plan code."
    id: 'millennium-careplan-search',
    source: MILLENNIUM_CAREPLAN_SEARCH,
    check: (params) => {
      if (params.has('_id')) {
        return criteria(params).length === 1 ? undefined : '_id may not be combined with other parameters';
      }
      const category = params.get('category') ?? [];
      if (category.length === 0) {
        return 'a search needs _id, or category (with patient)';
      }
      return category.every((value) => value.split(',').every((code) => code.split('|').pop() === 'assess-plan'))
        ? undefined
        : 'category supports only assess-plan';
    },
  },
  {
    // date: "When provided, must use both ge and le prefixes in the same search. The lower value must have the ge
    // prefix and the higher value must have the le prefix."
    id: 'millennium-careplan-date',
    source: MILLENNIUM_CAREPLAN_SEARCH,
    check: (params) => {
      const dates = params.get('date');
      if (!dates) {
        return undefined;
      }
      const prefixes = dates.map((value) => value.slice(0, 2)).sort();
      return prefixes.join(',') === 'ge,le' ? undefined : 'date needs exactly one ge and one le value';
    },
  },
]);

const MILLENNIUM_DOCUMENT_REFERENCE_SEARCH_RULES = Object.freeze([
  {
    // "_id: This, or patient" / "patient: This, or _id" (Required?).
    id: 'millennium-document-reference-search',
    source: MILLENNIUM_DOCUMENT_REFERENCE_SEARCH,
    check: (params) => (params.has('_id') || params.has('patient') ? undefined : 'a search needs _id or patient'),
  },
  {
    // period: "Must use the ge and lt prefixes."
    id: 'millennium-document-reference-period',
    source: MILLENNIUM_DOCUMENT_REFERENCE_SEARCH,
    check: (params) =>
      (params.get('period') ?? []).every((value) => /^(ge|lt)/.test(value))
        ? undefined
        : 'period takes only ge and lt values',
  },
]);

const MILLENNIUM_PROVENANCE_SEARCH_RULES = Object.freeze([
  {
    // Only read by id is documented; a search is taken by `_id` only (see profiles.js).
    id: 'millennium-provenance-search',
    source: 'https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-provenance-id-get.html',
    check: (params) => (params.has('_id') ? undefined : 'a search needs _id'),
  },
]);

// US Core DocumentReference profile, which the proposed "Writing Clinical Notes" page builds on:
//   https://build.fhir.org/ig/HL7/US-Core/writing-clinical-notes.html ("This write profile builds directly on the
//   US Core DocumentReference profile.")
const US_CORE_DOCUMENT_REFERENCE = 'https://hl7.org/fhir/us/core/StructureDefinition-us-core-documentreference.html';
const US_CORE_BOTH = { create: US_CORE_DOCUMENT_REFERENCE, update: US_CORE_DOCUMENT_REFERENCE };

/** The mandatory elements and the us-core-6 invariant of the US Core DocumentReference profile. */
const US_CORE_DOCUMENT_REFERENCE_RULES = Object.freeze([
  {
    // DocumentReference.type 1..1, required binding to US Core DocumentReference Type: LOINC document codes, or
    // "unknown" from http://terminology.hl7.org/CodeSystem/data-absent-reason.
    id: 'us-core-type',
    on: ['create', 'update'],
    sources: US_CORE_BOTH,
    check: ({ type }) =>
      type?.coding?.some(
        ({ system, code }) =>
          (system === LOINC && code) ||
          (system === 'http://terminology.hl7.org/CodeSystem/data-absent-reason' && code === 'unknown')
      )
        ? undefined
        : 'type has no LOINC coding',
  },
  {
    // DocumentReference.category 1..*.
    id: 'us-core-category',
    on: ['create', 'update'],
    sources: US_CORE_BOTH,
    check: ({ category = [] }) => (category.length > 0 ? undefined : 'category is missing'),
  },
  {
    // DocumentReference.subject 1..1 Reference(US Core Patient).
    id: 'us-core-subject',
    on: ['create', 'update'],
    sources: US_CORE_BOTH,
    check: subjectIsPatient,
  },
  {
    // us-core-6: "DocumentReference.content.attachment.url or DocumentReference.content.attachment.data or both
    // SHALL be present."
    id: 'us-core-6',
    on: ['create', 'update'],
    sources: US_CORE_BOTH,
    check: ({ content = [] }) =>
      content.every(({ attachment }) => attachment?.url || attachment?.data)
        ? undefined
        : 'content.attachment has neither url nor data',
  },
]);

function subjectIsPatient({ subject }) {
  return isReferenceTo('Patient', subject) ? undefined : 'subject is not a Patient reference';
}

/** True when `reference` is a literal reference to a resource of `type` (`Type/id`, relative or absolute). */
function isReferenceTo(type, reference) {
  const literal = reference?.reference;
  return typeof literal === 'string' && new RegExp(`(^|/)${type}/[A-Za-z0-9\\-.]{1,64}$`).test(literal);
}

module.exports = {
  MILLENNIUM_DOCUMENT_REFERENCE_RULES,
  MILLENNIUM_CAREPLAN_SEARCH_RULES,
  MILLENNIUM_DOCUMENT_REFERENCE_SEARCH_RULES,
  MILLENNIUM_PROVENANCE_SEARCH_RULES,
  US_CORE_DOCUMENT_REFERENCE_RULES,
};
