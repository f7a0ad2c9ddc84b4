'use strict';
/**
 * What the sandbox advertises and what it enforces come from one capability profile (see profiles.js).
 *
 * The CapabilityStatement (`GET /fhir/metadata`) is generated from the profile, and the gate that every request
 * and every Bundle entry passes reads the same profile, so the two cannot drift apart. Clients (the careplan
 * dispatcher) plan their requests from the CapabilityStatement; the gate makes sure a client that uses anything
 * the statement does not declare is refused, the way a strict production EHR refuses it:
 *
 *   undeclared resource type                                   404  undeclared-type
 *   undeclared interaction (also conditional update/delete,    405  undeclared-interaction
 *     update-as-create where updateCreate is false)
 *   undeclared search parameter (search, If-None-Exist,        400  undeclared-search-param
 *     Bundle ifNoneExist, conditional update/delete, _sort)
 *   If-None-Exist / ifNoneExist where conditionalCreate false  400  conditional-create
 *   a vendor content rule of the profile (vendor-rules.js)     422  vendor-rule (400 for a missing If-Match)
 *   a vendor search rule (a required parameter combination)    400  vendor-rule
 *
 * A refusal is `{ status, kind, detail, code }`; fhir.js answers it as an OperationOutcome and the request log
 * records `{ kind, detail }` (requestlog.js).
 */
const { validateResource } = require('@medplum/core');
const definitions = require('./definitions');
const { HAPI_PROFILE, PROFILES, ALIASES, ALL } = require('./profiles');
const { version } = require('../package.json');

/**
 * Request parameters that shape the result rather than select resources; they are never search parameters.
 * `_summary` is accepted only as `_summary=count` and `_sort` only on declared parameters (checked below).
 */
const RESULT_PARAMETERS = new Set(['_count', '_offset', '_sort', '_summary', '_total', '_format', '_pretty']);

/** The profile called `name` (or one of its aliases); throws an Error listing the known names otherwise. */
function profileNamed(name) {
  const canonical = Object.hasOwn(ALIASES, name) ? ALIASES[name] : name;
  const profile = Object.hasOwn(PROFILES, canonical) ? PROFILES[canonical] : undefined;
  if (!profile) {
    const known = [...Object.keys(PROFILES), ...Object.keys(ALIASES)].join(', ');
    throw new Error(`unknown capability profile ${JSON.stringify(name)}; known: ${known}`);
  }
  return profile;
}

/**
 * One resource type as a profile declares it, with defaults filled in and the search parameters resolved to
 * their R4 definitions. Throws when the profile names a search parameter the sandbox cannot evaluate: declaring
 * it would be a lie.
 */
function resolveType(type, declared) {
  const interactions = declared.interactions ?? [];
  const names =
    declared.searchParams === ALL ? Object.keys(definitions.searchParameters(type)) : declared.searchParams ?? [];
  const searchParams = new Map(
    names.map((name) => {
      const param = definitions.searchParameter(type, name);
      if (!param) {
        throw new Error(`profile declares search parameter "${name}" on ${type}, which the sandbox cannot evaluate`);
      }
      return [name, param];
    })
  );
  const has = (code) => interactions.includes(code);
  return {
    type,
    interactions,
    searchParams: has('search-type') ? searchParams : new Map(),
    conditionalCreate: has('create') && Boolean(declared.conditionalCreate),
    conditionalUpdate: has('update') && Boolean(declared.conditionalUpdate),
    conditionalDelete: has('delete') ? declared.conditionalDelete ?? 'not-supported' : 'not-supported',
    updateCreate: has('update') && Boolean(declared.updateCreate),
    supportedProfile: declared.supportedProfile ?? [],
    documentation: declared.documentation,
    rules: declared.rules ?? [],
    searchRules: declared.searchRules ?? [],
  };
}

function createCapabilities(profile = HAPI_PROFILE) {
  const resources = new Map();
  for (const type of definitions.resourceTypes()) {
    const declared = profile.types?.[type] ?? profile.allTypes;
    if (declared && (declared.interactions ?? []).length > 0) {
      resources.set(type, resolveType(type, declared));
    }
  }
  for (const type of Object.keys(profile.types ?? {})) {
    if (!definitions.isResourceType(type)) {
      throw new Error(`profile ${profile.name} declares "${type}", which is not an R4 resource type`);
    }
  }
  const published = new Date().toISOString();

  /**
   * The refusal of a request (or Bundle entry) before its body is looked at, or undefined when the profile
   * allows it.
   *
   * @param op - { interaction, resourceType, id, query: [[name, value]...] of the URL, ifNoneExist, exists }
   *   `interaction` is medplum's route interaction; `id` is undefined for conditional update/delete; `exists()`
   *   tells whether resourceType/id is stored (update-as-create check).
   */
  function refuseRequest(op) {
    const { interaction, resourceType } = op;
    if (resourceType === undefined) {
      return profile.system.includes(interaction) ? undefined : undeclaredInteraction(interaction, 'the system');
    }
    const spec = resources.get(resourceType);
    if (!spec) {
      return {
        status: 404,
        kind: 'undeclared-type',
        detail: `Resource type "${resourceType}" is not supported by this server`,
        code: 'not-supported',
      };
    }
    if (!spec.interactions.includes(interaction)) {
      return undeclaredInteraction(interaction, resourceType);
    }
    if (interaction === 'search-type') {
      return refuseSearch(resourceType, op.query);
    }
    if (interaction === 'update' && op.id === undefined) {
      return spec.conditionalUpdate
        ? refuseSearch(resourceType, op.query)
        : undeclaredInteraction('conditional update', resourceType);
    }
    if (interaction === 'delete' && op.id === undefined) {
      return spec.conditionalDelete !== 'not-supported'
        ? refuseSearch(resourceType, op.query)
        : undeclaredInteraction('conditional delete', resourceType);
    }
    if (interaction === 'update' && !spec.updateCreate && !op.exists()) {
      return undeclaredInteraction('update-as-create (updateCreate is false)', resourceType);
    }
    if (interaction === 'create' && op.ifNoneExist !== undefined) {
      if (!spec.conditionalCreate) {
        return {
          status: 400,
          kind: 'conditional-create',
          detail: `Conditional create (If-None-Exist) is not supported on ${resourceType}`,
          code: 'not-supported',
        };
      }
      return refuseSearch(resourceType, [...new URLSearchParams(op.ifNoneExist)]);
    }
    return undefined;
  }

  /** The refusal of a search on `resourceType` with `params` ([[name, value]...]), or undefined. */
  function refuseSearch(resourceType, params) {
    const spec = resources.get(resourceType);
    const declared = spec?.searchParams ?? new Map();
    for (const [key, value] of params) {
      const name = parameterName(key);
      if (name === '_sort') {
        const unsorted = value.split(',').map((rule) => rule.replace(/^-/, '')).find((code) => !declared.has(code));
        if (unsorted === undefined) {
          continue;
        }
        return undeclaredSearchParam(`_sort=${unsorted}`, resourceType);
      }
      if (name === '_summary' ? value === 'count' : RESULT_PARAMETERS.has(name) || declared.has(name)) {
        continue;
      }
      return undeclaredSearchParam(name === '_summary' ? `_summary=${value}` : key, resourceType);
    }
    const byName = new Map();
    for (const [key, value] of params) {
      const name = parameterName(key);
      byName.set(name, [...(byName.get(name) ?? []), value]);
    }
    for (const rule of spec?.searchRules ?? []) {
      const broken = rule.check(byName);
      if (broken) {
        return { status: 400, kind: 'vendor-rule', detail: `${rule.id}: ${broken} (${rule.source})`, code: 'invalid' };
      }
    }
    return undefined;
  }

  /** The refusal of a resource sent with a create or update, by the profile's vendor rules, or undefined. */
  function refuseContent(op, resource) {
    const spec = resources.get(op.resourceType);
    const action = op.interaction === 'create' ? 'create' : op.interaction === 'update' ? 'update' : undefined;
    if (!spec?.rules.length || !action || !resource || typeof resource !== 'object' || !isValidR4(resource)) {
      return undefined;
    }
    for (const rule of spec.rules) {
      if (!rule.on.includes(action)) {
        continue;
      }
      const broken = rule.check(resource, { action, ifMatch: op.ifMatch });
      if (broken) {
        return {
          status: rule.status ?? 422,
          kind: 'vendor-rule',
          detail: `${rule.id}: ${broken} (${rule.sources[action]})`,
          code: rule.code ?? 'business-rule',
        };
      }
    }
    return undefined;
  }

  function resourceEntry(spec) {
    const entry = {
      type: spec.type,
      profile: `http://hl7.org/fhir/StructureDefinition/${spec.type}`,
      ...(spec.supportedProfile.length ? { supportedProfile: spec.supportedProfile } : {}),
      ...(spec.documentation ? { documentation: spec.documentation } : {}),
      interaction: spec.interactions.map((code) => ({ code })),
      versioning: 'versioned-update',
      readHistory: spec.interactions.includes('vread'),
      updateCreate: spec.updateCreate,
      conditionalCreate: spec.conditionalCreate,
      conditionalRead: 'not-supported',
      conditionalUpdate: spec.conditionalUpdate,
      conditionalDelete: spec.conditionalDelete,
    };
    if (spec.searchParams.size) {
      entry.searchParam = [...spec.searchParams].map(([name, param]) => ({
        name,
        ...(param.url ? { definition: param.url } : {}),
        type: param.type,
      }));
    }
    return entry;
  }

  /** The CapabilityStatement for a server reachable at `baseUrl`; `security` describes the current auth. */
  function statement(baseUrl, security) {
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: published,
      publisher: 'Cicatrix',
      kind: 'instance',
      software: { name: 'Cicatrix EHR sandbox (@medplum/fhir-router, MemoryRepository)', version },
      implementation: {
        description: `Cicatrix EHR sandbox, capability profile "${profile.name}": ${profile.description}`,
        url: baseUrl,
      },
      fhirVersion: '4.0.1',
      format: ['application/fhir+json', 'json'],
      ...(profile.implementationGuide ? { implementationGuide: profile.implementationGuide } : {}),
      rest: [
        {
          mode: 'server',
          documentation:
            'Every write is validated against the FHIR R4 StructureDefinitions. Anything this statement does not ' +
            'declare is refused: an undeclared type (404), interaction (405), search parameter (400, also in ' +
            'If-None-Exist and ifNoneExist) or conditional create (400).',
          ...(security ? { security } : {}),
          resource: [...resources.values()].map(resourceEntry),
          ...(profile.system.length ? { interaction: profile.system.map((code) => ({ code })) } : {}),
        },
      ],
    };
  }

  return {
    profile,
    refuseRequest,
    refuseSearch,
    refuseContent,
    statement,
  };
}

/**
 * The search parameter a query key names: `identifier:exact` -> `identifier`. A chained key (`subject.name`,
 * `subject:Patient.name`) stays whole: chaining is never declared, so it is refused as an undeclared parameter.
 */
function parameterName(key) {
  return key.includes('.') ? key : key.split(':')[0];
}

/**
 * True when the resource is valid R4. Vendor rules read elements in their R4 shapes, so they judge only valid
 * resources; an invalid one is left to the validation on write, which refuses it with 400 as on any profile.
 */
function isValidR4(resource) {
  try {
    validateResource(resource);
    return true;
  } catch {
    return false;
  }
}

function undeclaredInteraction(interaction, where) {
  return {
    status: 405,
    kind: 'undeclared-interaction',
    detail: `"${interaction}" is not supported on ${where}`,
    code: 'not-supported',
  };
}

function undeclaredSearchParam(param, resourceType) {
  return {
    status: 400,
    kind: 'undeclared-search-param',
    detail: `Unknown or unsupported search parameter "${param}" for ${resourceType}`,
    code: 'not-supported',
  };
}

/** Throws if the statement this profile produces is not valid R4 (used at startup and in tests). */
function checkStatement(capabilities) {
  validateResource(capabilities.statement('http://127.0.0.1/fhir', { description: 'check' }));
}

module.exports = { HAPI_PROFILE, PROFILES, profileNamed, createCapabilities, checkStatement };
