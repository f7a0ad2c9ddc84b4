'use strict';
/**
 * The FHIR endpoint (/fhir): HTTP in, @medplum/fhir-router over SandboxRepository, HTTP out.
 *
 * medplum supplies the REST semantics: routing, read/vread/search/create/update/delete, If-None-Exist, If-Match,
 * Bundle processing (entry ordering, conditional-create resolution, urn:uuid reference rewriting). This module
 * adds what surrounds them on a real server: content negotiation, the CapabilityStatement, response headers
 * (Location, ETag, Last-Modified), searchset links, transaction atomicity, transaction-response entries with
 * status lines, and an OperationOutcome for every error.
 *
 * Transactions run through medplum's Bundle processor inside SandboxRepository.withTransaction(): the first entry
 * that fails throws, the store is restored, and that entry's OperationOutcome is the answer. medplum's own
 * transaction mode (FhirRequest.config.transactions) is deliberately not enabled: it rejects any transaction with
 * a conditional create and more than 8 entries (a limit of PostgreSQL serializable isolation, meaningless for an
 * in-memory store, and one that a CarePlan with its requests and Provenance easily exceeds).
 *
 * All FHIR processing runs one request at a time (`serialize`), so a transaction's snapshot and restore can never
 * interleave with another request's writes.
 */
const {
  OperationOutcomeError,
  getStatus,
  isCreated,
  isOk,
  normalizeOperationOutcome,
  validateResource,
} = require('@medplum/core');
const { FhirRouter, processBatch } = require('@medplum/fhir-router');
const { operationOutcome, outcomeAnswer, statusLine } = require('./http');

const JSON_BODY_TYPES = new Set(['application/fhir+json', 'application/json', 'application/json+fhir']);
const ACCEPTABLE = new Set(['*/*', 'application/*', ...JSON_BODY_TYPES]);
const JSON_FORMATS = new Set(['json', ...JSON_BODY_TYPES]);
const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH']);

/**
 * @param repo - SandboxRepository
 * @param capabilities - from capabilities.createCapabilities()
 * @param security - () => CapabilityStatement.rest.security for the current auth config, or undefined
 */
function createFhirEndpoint({ repo, capabilities, security }) {
  const router = new FhirRouter();
  const serialize = createMutex();

  /**
   * @param request - { method, url: URL, headers, rawBody: Buffer, baseUrl: 'http://host:port/fhir' }
   * @returns the answer { status, headers, body }
   */
  async function handle(request) {
    const { method, url, headers } = request;
    const path = url.pathname.replace(/^\/fhir\/?/, '').replace(/\/+$/, '');
    const ctx = { base: request.baseUrl, path, url, prefer: preferredReturn(headers.prefer) };

    const notAcceptable = negotiate(url.searchParams, headers.accept);
    if (notAcceptable) {
      return notAcceptable;
    }
    if (path === 'metadata') {
      return method === 'GET'
        ? { status: 200, headers: {}, body: capabilities.statement(ctx.base, security()) }
        : outcomeAnswer(405, 'metadata only answers GET');
    }

    const route = router.find(method, path + url.search);
    if (!route) {
      return outcomeAnswer(404, `No FHIR interaction matches ${method} [base]/${path}`);
    }
    const interaction = route.data.interaction;
    const op = describe(route, {
      query: [...url.searchParams],
      ifNoneExist: headerValue(headers['if-none-exist']),
      ifMatch: headerValue(headers['if-match']),
    });
    // POST [base] is checked once the Bundle type (batch or transaction) is known.
    const refused = interaction === 'batch' ? undefined : capabilities.refuseRequest(op);
    if (refused) {
      return refusalAnswer(refused);
    }

    const body = parseBody(method, path, headers, request.rawBody);
    if (body.answer) {
      return body.answer;
    }
    if (interaction === 'batch') {
      return bundle(body.value, headers, ctx);
    }
    const refusedContent = path.endsWith('/_search')
      ? capabilities.refuseSearch(op.resourceType, formPairs(body.value))
      : capabilities.refuseContent(op, body.value);
    if (refusedContent) {
      return refusalAnswer(refusedContent);
    }

    const routed = fhirRequest(method, path + url.search, headers, body.value);
    const [outcome, resource] = await serialize(() => router.handleRequest(routed, repo));
    return answerFor(interaction, outcome, resource, ctx);
  }

  /** POST [base] with a batch or transaction Bundle. */
  async function bundle(input, headers, ctx) {
    if (input?.resourceType !== 'Bundle') {
      return outcomeAnswer(400, 'POST [base] expects a Bundle of type batch or transaction');
    }
    if (input.type !== 'batch' && input.type !== 'transaction') {
      return outcomeAnswer(400, `POST [base] expects a Bundle of type batch or transaction, not "${input.type}"`);
    }
    const refusedType = capabilities.refuseRequest({ interaction: input.type });
    if (refusedType) {
      return refusalAnswer(refusedType);
    }
    const refused = checkEnvelope(input);
    if (refused) {
      return refused;
    }

    const batch = fhirRequest('POST', '', headers, input);
    try {
      const response = await serialize(() =>
        input.type === 'transaction'
          ? repo.withTransaction(async () => failOnError(await processBatch(batch, repo, router, input)))
          : processBatch(batch, repo, router, input)
      );
      return { status: 200, headers: {}, body: responseBundle(input, response, ctx) };
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      return { status: getStatus(outcome), headers: {}, body: outcome };
    }
  }

  /**
   * The Bundle itself must be valid R4 (entry resources are validated when written), and every entry must pass
   * the capability gate as a single request would: the first refused entry refuses the whole Bundle, and its
   * refusal (naming `Bundle.entry[i]`) is the Bundle's.
   */
  function checkEnvelope(input) {
    const envelope = { ...input, entry: input.entry?.map(({ resource: _validatedOnWrite, ...entry }) => entry) };
    try {
      validateResource(envelope);
    } catch (err) {
      return { status: 400, headers: {}, body: normalizeOperationOutcome(err) };
    }
    for (const [index, entry] of (input.entry ?? []).entries()) {
      const url = entry.request?.url ?? '';
      const route = entry.request ? router.find(entry.request.method, url) : undefined;
      if (!route) {
        continue; // medplum answers these with its own error
      }
      const query = url.includes('?') ? [...new URLSearchParams(url.slice(url.indexOf('?') + 1))] : [];
      const op = describe(route, { query, ifNoneExist: entry.request.ifNoneExist, ifMatch: entry.request.ifMatch });
      const refused = capabilities.refuseRequest(op) ?? capabilities.refuseContent(op, entry.resource);
      if (refused) {
        return refusalAnswer(refused, `Bundle.entry[${index}]: `);
      }
    }
    return undefined;
  }

  /** A routed request (or Bundle entry) as the capability gate reads it. */
  function describe(route, { query, ifNoneExist, ifMatch }) {
    const { resourceType, id } = route.params;
    return {
      interaction: route.data.interaction,
      resourceType,
      id,
      query,
      ifNoneExist,
      ifMatch,
      exists: () => repo.has(resourceType, id),
    };
  }

  return { handle, router };
}

/** The answer to a request the capability gate refused; `refusal` goes to the request log. */
function refusalAnswer(refusal, where = '') {
  const detail = `${where}${refusal.detail}`;
  return {
    status: refusal.status,
    headers: {},
    body: operationOutcome(refusal.status, detail, refusal.code),
    refusal: { kind: refusal.kind, detail },
  };
}

/** A header's value; a repeated header counts as its first value. */
function headerValue(value) {
  return Array.isArray(value) ? value[0] : value;
}

/** The parsed form body of POST [type]/_search as [[name, value]...]. */
function formPairs(form) {
  return Object.entries(form ?? {}).flatMap(([name, value]) =>
    (Array.isArray(value) ? value : [value]).map((one) => [name, one])
  );
}

/** medplum's FhirRequest; the router fills in pathname, params and query from `url`. */
function fhirRequest(method, url, headers, body) {
  return { method, url, pathname: '', params: {}, query: {}, headers, body };
}

/** In a transaction, the first failed entry aborts everything: throw its outcome, naming the entry. */
function failOnError(responseBundle) {
  const entries = responseBundle.entry ?? [];
  const index = entries.findIndex((entry) => !entry?.response?.outcome || !isOk(entry.response.outcome));
  if (index < 0) {
    return responseBundle;
  }
  const outcome = entries[index]?.response?.outcome ?? { resourceType: 'OperationOutcome', issue: [] };
  throw new OperationOutcomeError({
    ...outcome,
    issue: (outcome.issue ?? []).map((issue) => ({
      ...issue,
      diagnostics: `Bundle.entry[${index}]: ${issue.diagnostics ?? issue.details?.text ?? 'failed'}`,
    })),
  });
}

/** Turns medplum's batch/transaction response into R4 response entries: status lines, location, etag. */
function responseBundle(request, response, ctx) {
  const entry = (response.entry ?? []).map((result, index) => {
    const method = request.entry?.[index]?.request?.method;
    const outcome = result?.response?.outcome;
    if (!outcome || !isOk(outcome)) {
      const failed = outcome ?? normalizeOperationOutcome(new Error('entry was not processed'));
      return { response: { status: statusLine(getStatus(failed)), outcome: failed } };
    }
    const resource = result.resource;
    const versioned = resource?.meta?.versionId && resource.resourceType !== 'Bundle';
    const write = WRITE_METHODS.has(method);
    const status = write && isNewVersionOne(method, outcome, resource) ? 201 : getStatus(outcome);
    const answer = {};
    if (resource && ctx.prefer === 'representation') {
      if (resource.id) {
        answer.fullUrl = `${ctx.base}/${resource.resourceType}/${resource.id}`;
      }
      answer.resource = resource;
    }
    answer.response = { status: statusLine(status) };
    if (versioned) {
      if (write) {
        answer.response.location = `${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
      }
      answer.response.etag = `W/"${resource.meta.versionId}"`;
      answer.response.lastModified = resource.meta.lastUpdated;
    }
    if (ctx.prefer === 'OperationOutcome') {
      answer.response.outcome = outcome;
    }
    return answer;
  });
  return { resourceType: 'Bundle', type: response.type, ...(entry.length ? { entry } : {}) };
}

/** Turns the router's [outcome, resource] into an HTTP answer for a single interaction. */
function answerFor(interaction, outcome, resource, ctx) {
  if (!isOk(outcome)) {
    return { status: getStatus(outcome), headers: {}, body: outcome };
  }
  switch (interaction) {
    case 'search-type':
      return { status: 200, headers: {}, body: searchset(resource, ctx) };
    case 'history-instance':
      return { status: 200, headers: {}, body: withFullUrls(resource, ctx) };
    case 'delete':
      return { status: 200, headers: {}, body: outcome };
    case 'create':
    case 'update': {
      const status = isNewVersionOne(interaction === 'create' ? 'POST' : 'PUT', outcome, resource) ? 201 : 200;
      const headers = {
        ...versionHeaders(resource),
        Location: `${ctx.base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`,
      };
      const body = { representation: resource, OperationOutcome: outcome, minimal: undefined }[ctx.prefer];
      return { status, headers, body };
    }
    default:
      return { status: 200, headers: versionHeaders(resource), body: resource };
  }
}

/** A create answered 201 by medplum, or an update that created the resource (update-as-create). */
function isNewVersionOne(method, outcome, resource) {
  return method === 'POST' ? isCreated(outcome) : method === 'PUT' && resource?.meta?.versionId === '1';
}

function versionHeaders(resource) {
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource?.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  return headers;
}

function searchset(result, ctx) {
  const { base, path, url } = ctx;
  const link = [{ relation: 'self', url: `${base}/${path}${url.search}` }];
  const count = Number.parseInt(url.searchParams.get('_count') ?? '', 10);
  const offset = Number.parseInt(url.searchParams.get('_offset') ?? '0', 10) || 0;
  if (count > 0 && offset + count < (result.total ?? 0)) {
    const next = new URLSearchParams(url.searchParams);
    next.set('_offset', String(offset + count));
    link.push({ relation: 'next', url: `${base}/${path}?${next}` });
  }
  const entry = (result.entry ?? []).map(({ resource }) => ({
    fullUrl: `${base}/${resource.resourceType}/${resource.id}`,
    resource,
    search: { mode: 'match' },
  }));
  const page = entry.length ? { entry } : {};
  return { resourceType: 'Bundle', type: 'searchset', total: result.total, link, ...page };
}

function withFullUrls(result, ctx) {
  const entry = (result.entry ?? []).map(({ resource }) => ({
    fullUrl: `${ctx.base}/${resource.resourceType}/${resource.id}`,
    resource,
  }));
  return { ...result, ...(entry.length ? { entry } : {}) };
}

/** 406 unless the client accepts FHIR JSON; `_format` overrides Accept. */
function negotiate(searchParams, accept) {
  const format = searchParams.get('_format');
  if (format !== null) {
    return JSON_FORMATS.has(mediaType(format))
      ? undefined
      : outcomeAnswer(406, `_format=${format} is not supported; this server speaks application/fhir+json`);
  }
  if (!accept || accept.split(',').some((part) => ACCEPTABLE.has(mediaType(part)))) {
    return undefined;
  }
  return outcomeAnswer(406, `Cannot answer in ${accept}; this server speaks application/fhir+json`);
}

/** `{ value }` with the parsed body, or `{ answer }` with the 400/415 to send. */
function parseBody(method, path, headers, rawBody) {
  if (!WRITE_METHODS.has(method)) {
    return { value: undefined };
  }
  const type = mediaType(headers['content-type'] ?? '');
  if (path.endsWith('/_search')) {
    if (rawBody.length && type !== 'application/x-www-form-urlencoded') {
      return { answer: outcomeAnswer(415, 'POST [type]/_search takes application/x-www-form-urlencoded') };
    }
    return { value: formObject(rawBody.toString('utf8')) };
  }
  if (!rawBody.length) {
    return { answer: outcomeAnswer(400, `${method} needs a body`) };
  }
  if (!JSON_BODY_TYPES.has(type)) {
    return { answer: outcomeAnswer(415, `Content-Type "${type}" is not supported; send application/fhir+json`) };
  }
  try {
    return { value: JSON.parse(rawBody.toString('utf8')) };
  } catch (err) {
    return { answer: outcomeAnswer(400, `The body is not valid JSON: ${err.message}`) };
  }
}

/** `return=` of the Prefer header: minimal, representation (default) or OperationOutcome. */
function preferredReturn(prefer) {
  const value = /return=(minimal|representation|OperationOutcome)/i.exec(prefer ?? '')?.[1]?.toLowerCase();
  return { minimal: 'minimal', operationoutcome: 'OperationOutcome' }[value] ?? 'representation';
}

function mediaType(value) {
  return value.split(';')[0].trim().toLowerCase();
}

function formObject(text) {
  const params = new URLSearchParams(text);
  const object = {};
  for (const key of new Set(params.keys())) {
    const values = params.getAll(key);
    object[key] = values.length === 1 ? values[0] : values;
  }
  return object;
}

/** Runs async functions one at a time, in call order. */
function createMutex() {
  let tail = Promise.resolve();
  return (fn) => {
    const run = tail.then(fn);
    tail = run.then(
      () => undefined,
      () => undefined
    );
    return run;
  };
}

module.exports = { createFhirEndpoint };
