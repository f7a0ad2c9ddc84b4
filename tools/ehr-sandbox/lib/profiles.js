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
 *
 * Each declaration carries the public page it comes from. Where a vendor's documentation is silent the profile
 * takes the strict reading (the capability is not declared) and says so.
 */

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

/** The named capability profiles. */
const PROFILES = Object.freeze({
  hapi: HAPI_PROFILE,
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
