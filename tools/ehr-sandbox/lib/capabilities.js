'use strict';
/**
 * What the sandbox advertises and what it enforces come from one capability profile.
 *
 * The CapabilityStatement (`GET /fhir/metadata`) is generated from the profile and the gate `allows()` that every
 * request and every Bundle entry passes reads the same profile, so the two cannot drift apart. Clients (the
 * careplan dispatcher) choose their delivery shape from the CapabilityStatement, so it must say only what works.
 *
 * Restricted capability modes are other profiles (PROFILES below), chosen by name with EHR_SANDBOX_PROFILE or
 * `{"profile": "..."}` on /_control/config; the statement and the enforcement follow without further code. They
 * model the EHRs the careplan dispatcher must cope with:
 *   full               transactions, batches, every interaction on every type
 *   no-transaction     single requests and batches only (many production EHRs)
 *   no-careplan-write  no CarePlan create/update/delete and no Bundles at all, but DocumentReference and
 *                      Provenance writes (the way Oracle Health Millennium R4 behaves)
 */
const { validateResource } = require('@medplum/core');
const definitions = require('./definitions');
const { version } = require('../package.json');

/** Everything the server really implements (medplum routes backed by SandboxRepository). */
const FULL_PROFILE = Object.freeze({
  name: 'full',
  /** System-level interactions: POST /fhir with a Bundle of type transaction or batch. */
  system: ['transaction', 'batch'],
  /** Type- and instance-level interactions offered on every resource type, unless `resources` narrows them. */
  type: ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'],
  /** Per resource type restrictions: `{ CarePlan: { exclude: ['create'] } }`. */
  resources: {},
});

/** The named capability profiles; see the module comment. */
const PROFILES = Object.freeze({
  full: FULL_PROFILE,
  'no-transaction': Object.freeze({ ...FULL_PROFILE, name: 'no-transaction', system: ['batch'] }),
  'no-careplan-write': Object.freeze({
    ...FULL_PROFILE,
    name: 'no-careplan-write',
    system: [],
    resources: { CarePlan: { exclude: ['create', 'update', 'delete'] } },
  }),
});

/** The profile called `name`; throws an Error listing the known names otherwise. */
function profileNamed(name) {
  const profile = Object.hasOwn(PROFILES, name) ? PROFILES[name] : undefined;
  if (!profile) {
    throw new Error(`unknown capability profile ${JSON.stringify(name)}; known: ${Object.keys(PROFILES).join(', ')}`);
  }
  return profile;
}

function createCapabilities(profile = FULL_PROFILE) {
  const types = definitions.resourceTypes();
  const published = new Date().toISOString();

  function typeInteractions(resourceType) {
    const excluded = new Set(profile.resources?.[resourceType]?.exclude ?? []);
    return profile.type.filter((code) => !excluded.has(code));
  }

  /** True when the profile offers `interaction` (on `resourceType`, for type-level interactions). */
  function allows(interaction, resourceType) {
    if (profile.system.includes(interaction)) {
      return true;
    }
    return Boolean(resourceType) && typeInteractions(resourceType).includes(interaction);
  }

  function resourceEntry(type) {
    const interactions = typeInteractions(type);
    const has = (code) => interactions.includes(code);
    const entry = {
      type,
      profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
      interaction: interactions.map((code) => ({ code })),
      versioning: 'versioned-update',
      readHistory: has('vread'),
      updateCreate: has('update'),
      conditionalCreate: has('create'),
      conditionalRead: 'not-supported',
      conditionalUpdate: has('update'),
      conditionalDelete: has('delete') ? 'single' : 'not-supported',
    };
    if (has('search-type')) {
      entry.searchParam = Object.entries(definitions.searchParameters(type)).map(([name, param]) => ({
        name,
        ...(param.url ? { definition: param.url } : {}),
        type: param.type,
      }));
    }
    return entry;
  }

  /** The CapabilityStatement for a server reachable at `baseUrl`; `security` describes the current auth. */
  function statement(baseUrl, security) {
    const capabilityStatement = {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: published,
      publisher: 'Cicatrix',
      kind: 'instance',
      software: { name: 'Cicatrix EHR sandbox (@medplum/fhir-router, MemoryRepository)', version },
      implementation: { description: `Cicatrix EHR sandbox, capability profile "${profile.name}"`, url: baseUrl },
      fhirVersion: '4.0.1',
      format: ['application/fhir+json', 'json'],
      rest: [
        {
          mode: 'server',
          documentation:
            'Every write is validated against the FHIR R4 StructureDefinitions; ' +
            'unknown or unsupported search parameters are rejected with 400.',
          ...(security ? { security } : {}),
          resource: types.filter((type) => typeInteractions(type).length > 0).map(resourceEntry),
          interaction: profile.system.map((code) => ({ code })),
        },
      ],
    };
    return capabilityStatement;
  }

  return { profile, allows, supportsType: definitions.isResourceType, statement };
}

/** Throws if the statement this profile produces is not valid R4 (used at startup and in tests). */
function checkStatement(capabilities) {
  validateResource(capabilities.statement('http://127.0.0.1/fhir', { description: 'check' }));
}

module.exports = { FULL_PROFILE, PROFILES, profileNamed, createCapabilities, checkStatement };
