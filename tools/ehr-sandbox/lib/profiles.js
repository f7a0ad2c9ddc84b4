'use strict';
/**
 * The capability profiles: which EHR the sandbox plays. Each profile is data, read by capabilities.js both to
 * write the CapabilityStatement and to refuse whatever the statement does not declare.
 *
 * A profile:
 *   name, description          shown in CapabilityStatement.implementation.description
 *   system                     system interactions ('transaction', 'batch')
 *   allTypes                   the declaration of every R4 resource type (HAPI-like servers), or absent
 *   types                      per type declarations; they replace `allTypes` for that type
 *   implementationGuide        CapabilityStatement.implementationGuide, if any
 *
 * A type declaration:
 *   interactions               'read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'
 *   searchParams               names of R4 search parameters (or ALL: every one the sandbox evaluates)
 *   conditionalCreate, conditionalUpdate, updateCreate (booleans), conditionalDelete ('not-supported'|'single')
 *   supportedProfile           canonical URLs of the profiles the type supports
 *   documentation              CapabilityStatement.rest.resource.documentation
 *   rules                      vendor rules on create/update content (vendor-rules.js)
 *   searchRules                vendor rules on the parameters a search combines (vendor-rules.js)
 *
 * Each declaration carries the public page it comes from. Where a vendor's documentation is silent the profile
 * takes the strict reading (the capability is not declared) and says so.
 */

const {
  MILLENNIUM_CAREPLAN_SEARCH_RULES,
  MILLENNIUM_DOCUMENT_REFERENCE_RULES,
  MILLENNIUM_DOCUMENT_REFERENCE_SEARCH_RULES,
  MILLENNIUM_PROVENANCE_SEARCH_RULES,
  US_CORE_DOCUMENT_REFERENCE_RULES,
} = require('./vendor-rules');

/** Every search parameter of the type that the sandbox evaluates (definitions.searchParameters). */
const ALL = '*';

/** Everything the server really implements, on every type. */
const EVERY_TYPE = Object.freeze({
  interactions: ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'],
  searchParams: ALL,
  conditionalCreate: true,
  conditionalUpdate: true,
  conditionalDelete: 'single',
  updateCreate: true,
});

/**
 * A HAPI FHIR JPA server: every type, every interaction, transactions and batches, conditional create, update
 * and delete, update-as-create, and every search parameter including `_tag`.
 *   https://hapi.fhir.org/baseR4/metadata (the public HAPI test server's CapabilityStatement)
 *   https://hapifhir.io/hapi-fhir/docs/server_jpa/introduction.html
 *   https://hapifhir.io/hapi-fhir/docs/client/generic_client.html#conditional-create (If-None-Exist)
 * HAPI also offers patch, history-type/-system and search-system; the sandbox does not implement them, so this
 * profile does not declare them either.
 */
const HAPI_PROFILE = Object.freeze({
  name: 'hapi',
  description: 'a HAPI FHIR-like full server',
  system: ['transaction', 'batch'],
  allTypes: EVERY_TYPE,
  types: {},
});

/**
 * A minimal EHR: it takes CarePlans one request at a time and nothing else. No Provenance, no Bundles, no
 * conditional create, update or delete, no update-as-create (the server assigns ids), and only the two search
 * parameters almost every FHIR server offers (`_id`, `patient`): no `identifier`, no `_tag`. A client finds its
 * earlier plan by patient and matches its own identifier in the results.
 *   There is no vendor page for this one: it is the floor of the FHIR R4 RESTful API, where each capability is
 *   optional and announced in the CapabilityStatement (https://hl7.org/fhir/R4/http.html#capabilities,
 *   https://hl7.org/fhir/R4/capabilitystatement-definitions.html#CapabilityStatement.rest.resource.conditionalCreate).
 */
const MINIMAL_PROFILE = Object.freeze({
  name: 'minimal',
  description: 'a minimal EHR that takes CarePlan writes one at a time and nothing else',
  system: [],
  types: {
    CarePlan: {
      interactions: ['read', 'update', 'create', 'search-type'],
      searchParams: ['_id', 'patient'],
      conditionalCreate: false,
      conditionalUpdate: false,
      updateCreate: false,
    },
  },
});

/**
 * Oracle Health Millennium R4. No batch or transaction; CarePlan and Provenance read and search only;
 * DocumentReference create and update (plus read and search) under the published content rules
 * (vendor-rules.js); only the search parameters Millennium documents. Millennium declares many more types for
 * reading (Patient, Observation, ...); the careplan service reads none of them, so they are left out.
 */
const MILLENNIUM_PROFILE = Object.freeze({
  name: 'oracle-millennium',
  description: 'an Oracle Health Millennium R4-like EHR',
  // The published R4 CapabilityStatement has no rest.interaction (no batch, no transaction):
  //   https://fhir.cerner.com/millennium/r4/foundation/conformance/capability-statement/
  system: [],
  types: {
    // Read and search only; "category ... Only supports the assess-plan code", "_id ... required if the patient
    // and category parameters are not used", "date ... must use both ge and le":
    //   https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-careplan-get.html
    //   https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-careplan-id-get.html
    CarePlan: {
      interactions: ['read', 'search-type'],
      searchParams: ['_id', 'patient', 'category', 'date'],
      searchRules: MILLENNIUM_CAREPLAN_SEARCH_RULES,
    },
    // Read by id: https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-provenance-id-get.html
    // Provenance search parameters are not documented (Provenance is otherwise reached with
    // `_revinclude=Provenance:target`, which the sandbox does not evaluate); the strict reading declares `_id`
    // only: no `target`, no `_tag`.
    Provenance: {
      interactions: ['read', 'search-type'],
      searchParams: ['_id'],
      searchRules: MILLENNIUM_PROVENANCE_SEARCH_RULES,
    },
    // Create, update, read, search; search parameters `_id`, `patient`, `encounter`, `period`, `type`,
    // `category` (no `identifier`, no `_tag`):
    //   https://fhir.cerner.com/millennium/r4/foundation/documents/document-reference/
    //   https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-documentreference-post.html
    //   https://docs.oracle.com/en/industries/health/millennium-platform-apis/mfrap/op-documentreference-id-put.html
    // Neither write page documents If-None-Exist, a conditional update or an update that creates: all three are
    // not declared. The DocumentReference page names the US Core STU4 profiles the resource supports.
    DocumentReference: {
      interactions: ['read', 'update', 'create', 'search-type'],
      searchParams: ['_id', 'patient', 'encounter', 'period', 'type', 'category'],
      conditionalCreate: false,
      conditionalUpdate: false,
      updateCreate: false,
      supportedProfile: ['http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference'],
      documentation:
        'Create and update take exactly one content entry with a documented MIME type (application/pdf, ' +
        'text/plain, text/richtext, text/rtf, text/html, application/xml, application/xhtml+xml), every date with ' +
        'a time, status current, docStatus final, a Patient subject, a LOINC type, Practitioner authors (required ' +
        'on update) and authenticator. Update requires If-Match.',
      rules: MILLENNIUM_DOCUMENT_REFERENCE_RULES,
      searchRules: MILLENNIUM_DOCUMENT_REFERENCE_SEARCH_RULES,
    },
  },
});

/**
 * An EHR following the proposed US Core "Writing Clinical Notes" approach: notes are written as single
 * DocumentReference creates conforming to the US Core DocumentReference profile; nothing else is written.
 *   https://build.fhir.org/ig/HL7/US-Core/writing-clinical-notes.html
 * - "No requirement for FHIR transaction support; a single POST suffices": no batch, no transaction.
 * - "Create (and optional update)": update is optional; the strict reading leaves it out.
 * - If-None-Exist is not mentioned: no conditional create.
 * - Reads and searches of DocumentReference follow the US Core Server CapabilityStatement
 *   (https://hl7.org/fhir/us/core/CapabilityStatement-us-core-server.html#documentreference): `_id`, `patient`,
 *   `category`, `date`, `period`, `status`, `type` (no `identifier`, no `_tag`).
 * - The content rules are the US Core DocumentReference profile's mandatory elements (vendor-rules.js).
 */
const US_CORE_NOTES_PROFILE = Object.freeze({
  name: 'us-core-notes',
  description: 'an EHR that takes clinical notes the US Core "Writing Clinical Notes" way',
  system: [],
  implementationGuide: ['http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core'],
  types: {
    DocumentReference: {
      interactions: ['read', 'create', 'search-type'],
      searchParams: ['_id', 'patient', 'category', 'date', 'period', 'status', 'type'],
      conditionalCreate: false,
      supportedProfile: ['http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference'],
      documentation:
        'Notes are created one POST at a time and must conform to the US Core DocumentReference profile: ' +
        'status, a LOINC type, a category, a Patient subject, and content.attachment with data or url.',
      rules: US_CORE_DOCUMENT_REFERENCE_RULES,
    },
  },
});

/** The named capability profiles. */
const PROFILES = Object.freeze({
  hapi: HAPI_PROFILE,
  minimal: MINIMAL_PROFILE,
  'oracle-millennium': MILLENNIUM_PROFILE,
  'us-core-notes': US_CORE_NOTES_PROFILE,
  /** Single requests and batches only (many production EHRs). */
  'no-transaction': Object.freeze({
    ...HAPI_PROFILE,
    name: 'no-transaction',
    description: 'a full server without transactions',
    system: ['batch'],
  }),
  /** No CarePlan create/update/delete and no Bundles at all, but DocumentReference and Provenance writes. */
  'no-careplan-write': Object.freeze({
    ...HAPI_PROFILE,
    name: 'no-careplan-write',
    description: 'a full server that takes no CarePlan writes and no Bundles',
    system: [],
    types: {
      CarePlan: { ...EVERY_TYPE, interactions: ['read', 'vread', 'history-instance', 'search-type'] },
    },
  }),
});

/** Other names that select a profile. */
const ALIASES = Object.freeze({ full: 'hapi' });

module.exports = { ALL, HAPI_PROFILE, PROFILES, ALIASES };
