'use strict';
/**
 * SandboxRepository: @medplum/fhir-router's MemoryRepository, corrected where it differs from a real FHIR server.
 *
 * MemoryRepository is a test double inside Medplum. Used as the storage of a server it has gaps that would hide
 * exactly the client bugs the sandbox exists to catch, so this subclass closes them and nothing more:
 *
 * - writes are not validated          -> every stored version passes `validateResource` (R4), else 400;
 * - a create keeps the client's `id`  -> the server assigns ids (medplum's batch processor pre-assigns ids for
 *   and `meta.versionId/lastUpdated`     Bundle entries and says so with `assignedId`; those are kept);
 * - version ids are random UUIDs      -> "1", "2", ... per resource, so ETags read `W/"1"`;
 * - an unknown search parameter       -> 400. Conditional create (`If-None-Exist`, `ifNoneExist`) searches through
 *   silently matches nothing             here too, so a typo there is a 400 instead of a duplicate resource;
 * - `withTransaction` has no rollback -> the outermost call snapshots the store and restores it on any error;
 * - `readHistory` reverses its stored history array in place -> it reads a copy;
 * - search evaluates FHIRPath on every stored resource (slow: tens of ms per search with a few hundred resources,
 *   and every conditional create searches twice) -> token searches (`identifier=`, `_tag=`, the keys of
 *   conditional creates) first drop resources whose JSON does not even contain the searched value; medplum's own
 *   matcher still decides on the rest, so results are unchanged.
 *
 * It reaches into MemoryRepository's `resources` and `history` maps (TypeScript-private, plain properties at run
 * time); the constructor checks they exist, and the medplum version is pinned exactly in package.json.
 */
const {
  OperationOutcomeError,
  badRequest,
  deepClone,
  preconditionFailed,
  notFound,
  validateResource,
} = require('@medplum/core');
const { MemoryRepository } = require('@medplum/fhir-router');
const definitions = require('./definitions');

/** SearchRequest fields MemoryRepository ignores; a client relying on them would get a silently wrong answer. */
const IGNORED_SEARCH_FEATURES = {
  include: '_include',
  revInclude: '_revinclude',
  fields: '_elements',
  summary: '_summary',
  types: '_type',
  cursor: '_cursor',
};

class SandboxRepository extends MemoryRepository {
  #transactionDepth = 0;
  /** Candidates `conditionalCreate` validated, which medplum's conditionalCreate then hands to createResource. */
  #validated = new WeakSet();

  constructor() {
    super();
    if (!(this.resources instanceof Map) || !(this.history instanceof Map)) {
      throw new Error('MemoryRepository internals changed: check the pinned @medplum/fhir-router version');
    }
  }

  async createResource(resource, options) {
    const validated = this.#validated.delete(resource);
    return this.#store(options?.assignedId ? resource : withoutId(resource), validated);
  }

  async conditionalCreate(resource, search, options) {
    if (!search.filters?.length) {
      // "If-None-Exist: ?identifier=..." or an empty value would otherwise match every resource of the type.
      throw new OperationOutcomeError(
        badRequest('Conditional create needs search parameters, e.g. If-None-Exist: identifier=system|value')
      );
    }
    const candidate = options?.assignedId ? resource : withoutId(resource);
    // Validate even when a match means nothing gets written: an invalid request is invalid either way. What it
    // creates when nothing matches is this candidate with the server's id and meta, so `#store` does not check it
    // a second time.
    validate(candidate);
    this.#validated.add(candidate);
    return super.conditionalCreate(candidate, search, options);
  }

  async updateResource(resource, options) {
    if (!resource.id) {
      throw new OperationOutcomeError(badRequest('Missing id'));
    }
    if (options?.ifMatch) {
      const current = this.resources.get(resource.resourceType)?.get(resource.id);
      if (!current) {
        throw new OperationOutcomeError(notFound);
      }
      if (current.meta?.versionId !== options.ifMatch) {
        throw new OperationOutcomeError(preconditionFailed);
      }
    }
    return this.#store(resource);
  }

  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = this.history.get(resourceType)?.get(id) ?? [];
    const entry = versions
      .slice()
      .reverse()
      .map((version) => ({ resource: deepClone(version) }));
    return { resourceType: 'Bundle', type: 'history', total: entry.length, ...(entry.length ? { entry } : {}) };
  }

  async search(searchRequest) {
    checkSearchRequest(searchRequest);
    const needles = tokenNeedles(searchRequest);
    const all = this.resources.get(searchRequest.resourceType);
    if (!needles.length || !all) {
      return super.search(searchRequest);
    }
    // MemoryRepository.search scans this.resources synchronously (no await before it returns its promise), so
    // showing it only the candidates for that one call is safe; FHIR processing is serialised anyway.
    const candidates = new Map([...all].filter(([, resource]) => mayContain(resource, needles)));
    this.resources.set(searchRequest.resourceType, candidates);
    try {
      return super.search(searchRequest);
    } finally {
      this.resources.set(searchRequest.resourceType, all);
    }
  }

  /** All-or-nothing: the outermost call restores the store as it was if the callback throws. */
  async withTransaction(callback) {
    if (this.#transactionDepth > 0) {
      return callback(undefined);
    }
    const snapshot = this.#snapshot();
    this.#transactionDepth++;
    try {
      return await callback(undefined);
    } catch (err) {
      this.#restore(snapshot);
      throw err;
    } finally {
      this.#transactionDepth--;
    }
  }

  /** True when `resourceType/id` is stored (and not deleted). */
  has(resourceType, id) {
    return Boolean(id) && Boolean(this.resources.get(resourceType)?.has(id));
  }

  /** Current versions, optionally of one type, in creation order. */
  list(resourceType) {
    const maps = resourceType ? [this.resources.get(resourceType) ?? new Map()] : [...this.resources.values()];
    return maps.flatMap((byId) => [...byId.values()].map(deepClone));
  }

  /** Validates and stores a new version, with the server's own versionId and lastUpdated (`validated`: the
   * resource was validated just before, and only the server's id and meta are added to it here). */
  async #store(resource, validated = false) {
    const previousVersions = this.history.get(resource.resourceType)?.get(resource.id)?.length ?? 0;
    const { resourceType, id, meta, ...content } = deepClone(resource);
    const next = {
      resourceType,
      id: id ?? this.generateId(),
      meta: { ...meta, versionId: String(previousVersions + 1), lastUpdated: new Date().toISOString() },
      ...content,
    };
    if (!validated) {
      validate(next);
    }
    return super.createResource(next);
  }

  // Stored versions are never mutated in place (every write stores a fresh object, every read returns a clone),
  // so copying the maps is a complete snapshot.
  #snapshot() {
    const copy = (outer, copyValue) =>
      new Map([...outer].map(([type, byId]) => [type, new Map([...byId].map(([id, v]) => [id, copyValue(v)]))]));
    return {
      resources: copy(this.resources, (resource) => resource),
      history: copy(this.history, (versions) => versions.slice()),
    };
  }

  #restore(snapshot) {
    for (const name of ['resources', 'history']) {
      this[name].clear();
      for (const [type, byId] of snapshot[name]) {
        this[name].set(type, byId);
      }
    }
  }
}

/** Lower-cased JSON of each stored version (versions are never mutated, so the cache cannot go stale). */
const searchableText = new WeakMap();

/** Values an equality token filter requires to appear somewhere in a matching resource (lower case). */
function tokenNeedles(searchRequest) {
  const needles = [];
  for (const filter of searchRequest.filters ?? []) {
    const param = definitions.searchParameter(searchRequest.resourceType, filter.code);
    if (param?.type !== 'token' || filter.operator !== 'eq' || typeof filter.value !== 'string') {
      continue;
    }
    if (filter.value.includes(',')) {
      continue; // an OR of values: any one may match
    }
    const code = filter.value.includes('|') ? filter.value.slice(filter.value.indexOf('|') + 1) : filter.value;
    // Only values that JSON writes verbatim can be looked for in the JSON text.
    if (code && /^[\x20-\x7e]+$/.test(code) && !/["\\]/.test(code)) {
      needles.push(code.toLowerCase());
    }
  }
  return needles;
}

function mayContain(resource, needles) {
  let text = searchableText.get(resource);
  if (text === undefined) {
    text = JSON.stringify(resource).toLowerCase();
    searchableText.set(resource, text);
  }
  return needles.every((needle) => text.includes(needle));
}

function withoutId(resource) {
  if (!resource || typeof resource !== 'object') {
    return resource;
  }
  const { id: _ignored, ...rest } = resource;
  return rest;
}

/** Throws the validator's OperationOutcome (status 400) when the resource is not valid R4. */
function validate(resource) {
  if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
    throw new OperationOutcomeError(badRequest('The request body is not a FHIR resource'));
  }
  if (!definitions.isResourceType(resource.resourceType)) {
    throw new OperationOutcomeError(badRequest(`Unknown resource type "${resource.resourceType}"`));
  }
  validateResource(resource);
}

function checkSearchRequest(searchRequest) {
  const { resourceType } = searchRequest;
  for (const [field, parameter] of Object.entries(IGNORED_SEARCH_FEATURES)) {
    if (searchRequest[field] !== undefined) {
      throw new OperationOutcomeError(badRequest(`Search parameter "${parameter}" is not supported here`));
    }
  }
  const codes = [
    ...(searchRequest.filters ?? []).map((filter) => filter.code),
    ...(searchRequest.sortRules ?? []).map((rule) => rule.code),
  ];
  for (const code of codes) {
    if (!definitions.searchParameter(resourceType, code)) {
      throw new OperationOutcomeError(
        badRequest(`Unknown or unsupported search parameter "${code}" for ${resourceType}`)
      );
    }
  }
}

module.exports = { SandboxRepository, validate };
