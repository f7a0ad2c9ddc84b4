'use strict';
/**
 * The sandbox as one request handler: state, routing between the control API and the FHIR endpoint, and the
 * pipeline every non-control request goes through:
 *
 *   read body -> log -> configured latency -> fault (status | drop answer now; delay waits) -> authenticate ->
 *   route (/fhir, SMART discovery, /auth/token) -> apply-then-fail replaces the real answer -> write, complete log
 *
 * Faults act before authentication, as a proxy or an overloaded server would. A request still waiting (latency,
 * delay fault) when the sandbox is reset is dropped unprocessed: a test that gave up on a slow request must not
 * find it applied to the next test's fresh store.
 */
const { SandboxRepository } = require('./repository');
const { HAPI_PROFILE, PROFILES, profileNamed, createCapabilities, checkStatement } = require('./capabilities');
const { createFhirEndpoint } = require('./fhir');
const { createControl } = require('./control');
const { FaultQueue } = require('./faults');
const { RequestLog } = require('./requestlog');
const { authenticate, securityFor } = require('./auth');
const { SmartAuthority, normaliseSmartConfig } = require('./smart');
const { operationOutcome, outcomeAnswer, parseJson, readBody, sleep, writeAnswer } = require('./http');

/**
 * @param options - { token, latencyMs, profile, smart } startup config; `profile` is a capability profile name
 *   or alias (see profiles.js) or a profile object (the `hapi` profile by default); `smart` enables the
 *   SMART Backend Services token endpoint (see smart.js)
 * @returns (req, res) => void, with `.state` for tests and the server
 */
function createApp(options = {}) {
  const startProfile = options.profile ?? HAPI_PROFILE;
  const startupConfig = {
    token: options.token || null,
    latencyMs: options.latencyMs ?? 0,
    profile: typeof startProfile === 'string' ? profileNamed(startProfile).name : startProfile.name,
    smart: normaliseSmartConfig(options.smart ?? null),
  };
  /** Capabilities per profile name, built (and checked against R4) once each. */
  const capabilitiesByName = new Map();
  function capabilitiesFor(name) {
    if (!capabilitiesByName.has(name)) {
      const profile = typeof startProfile === 'object' && startProfile.name === name ? startProfile : profileNamed(name);
      const built = createCapabilities(profile);
      checkStatement(built);
      capabilitiesByName.set(name, built);
    }
    return capabilitiesByName.get(name);
  }
  capabilitiesFor(startupConfig.profile);
  Object.keys(PROFILES).forEach(capabilitiesFor);

  const state = {
    config: { ...startupConfig },
    repo: new SandboxRepository(),
    faults: new FaultQueue(),
    log: new RequestLog(),
    smart: new SmartAuthority(),
    /** Incremented by reset(); requests that began in an earlier epoch are dropped instead of processed. */
    epoch: 0,
    reset() {
      state.epoch += 1;
      state.repo.clear();
      state.faults.clear();
      state.log.clear();
      state.smart.clear();
      state.config = { ...startupConfig };
    },
    configure(update) {
      const unknown = Object.keys(update).filter((key) => !(key in startupConfig));
      if (unknown.length) {
        throw new Error(`unknown config ${unknown.join(', ')}; known: ${Object.keys(startupConfig).join(', ')}`);
      }
      const next = { ...state.config, ...update };
      if (next.token !== null && (typeof next.token !== 'string' || !next.token)) {
        throw new Error('token must be a non-empty string or null');
      }
      if (!Number.isFinite(next.latencyMs) || next.latencyMs < 0) {
        throw new Error('latencyMs must be a non-negative number');
      }
      if ('profile' in update) {
        next.profile = profileNamed(next.profile).name; // throws for an unknown name; an alias becomes the name
      }
      if ('smart' in update) {
        next.smart = normaliseSmartConfig(update.smart);
      }
      state.config = next;
    },
    /**
     * The config as the control API shows it: `token` and `latencyMs` always; `profile` and `smart` only when
     * they differ from a plain server ("hapi", null), so existing clients of the control API see what they did.
     */
    publicConfig() {
      const { profile, smart, ...shown } = state.config;
      return { ...shown, ...(profile !== HAPI_PROFILE.name ? { profile } : {}), ...(smart ? { smart } : {}) };
    },
  };

  /** The capabilities of the profile in force now (the profile can change at run time). */
  const capabilities = Object.fromEntries(
    ['refuseRequest', 'refuseSearch', 'refuseContent', 'statement'].map((name) => [
      name,
      (...args) => capabilitiesFor(state.config.profile)[name](...args),
    ])
  );

  const control = createControl(state);
  const fhir = createFhirEndpoint({
    repo: state.repo,
    capabilities,
    security: () => securityFor(state.config),
  });

  /** Everything outside /_control, by path prefix; the first match wins. */
  const ROUTES = [
    {
      prefix: '/fhir/.well-known/smart-configuration',
      handle: (request) => state.smart.discovery(state.config, rootUrl(request)),
      open: true,
    },
    {
      prefix: '/auth/token',
      handle: (request) => state.smart.token(state.config, request, `${rootUrl(request)}/auth/token`),
      open: true,
    },
    { prefix: '/fhir', handle: (request) => fhir.handle(request), open: false },
  ];

  async function serve(request) {
    const { pathname } = request.url;
    const route = ROUTES.find(({ prefix }) => pathname === prefix || pathname.startsWith(`${prefix}/`));
    if (!route) {
      return outcomeAnswer(404, `Nothing at ${pathname}; the FHIR base is /fhir`);
    }
    if (!route.open) {
      const refused = authenticate(state.config, request.method, pathname, request.headers, state.smart);
      if (refused) {
        return refused;
      }
    }
    return route.handle(request);
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://sandbox.invalid');
    const rawBody = await readBody(req);

    if (url.pathname === '/_control' || url.pathname.startsWith('/_control/')) {
      const parsed = parseJson(rawBody);
      const answer = parsed.error
        ? { status: 400, headers: {}, body: { error: `body is not JSON: ${parsed.error}` } }
        : control.handle(req.method, url, parsed.value);
      writeAnswer(res, answer, control.contentType);
      return;
    }

    const logged = state.log.record({ method: req.method, url, headers: req.headers, body: logBody(rawBody) });
    const epoch = state.epoch;
    const abandoned = () => {
      if (state.epoch === epoch) {
        return false;
      }
      req.socket.destroy(); // reset while this request waited: do not apply it to the fresh store
      return true;
    };
    await sleep(state.config.latencyMs);
    if (abandoned()) {
      return;
    }

    const fault = state.faults.take(req.method, url.pathname);
    if (fault) {
      logged.fault(fault.action);
    }
    if (fault?.action === 'drop') {
      logged.dropped();
      req.socket.destroy();
      return;
    }
    if (fault?.action === 'status') {
      const answer = faultAnswer(fault);
      writeAnswer(res, answer);
      logged.answered(answer.status);
      return;
    }
    if (fault?.action === 'delay') {
      await sleep(fault.delayMs);
      if (abandoned()) {
        return;
      }
    }

    const request = {
      method: req.method,
      url,
      headers: req.headers,
      rawBody,
      baseUrl: `http://${req.headers.host ?? `${req.socket.localAddress}:${req.socket.localPort}`}/fhir`,
    };
    let answer;
    try {
      answer = await serve(request);
    } catch (err) {
      console.error(err);
      answer = outcomeAnswer(500, `Internal error: ${err.message}`);
    }
    logged.refused(answer.refusal);

    if (fault?.action === 'apply-then-fail') {
      if (fault.drop) {
        logged.dropped();
        req.socket.destroy();
        return;
      }
      answer = faultAnswer(fault);
    }
    writeAnswer(res, answer);
    logged.answered(answer.status);
  }

  function requestListener(req, res) {
    handle(req, res).catch((err) => {
      console.error(err);
      if (!res.headersSent) {
        writeAnswer(res, outcomeAnswer(500, `Internal error: ${err.message}`));
      } else {
        res.destroy();
      }
    });
  }
  requestListener.state = state;
  return requestListener;
}

/** http://host:port as the client addressed the sandbox (the token URL an assertion's `aud` must name). */
function rootUrl(request) {
  return request.baseUrl.replace(/\/fhir$/, '');
}

/** The answer a status or apply-then-fail fault gives instead of the real one. */
function faultAnswer(fault) {
  const headers = fault.retryAfter !== undefined ? { 'Retry-After': fault.retryAfter } : {};
  const body = fault.outcome ?? operationOutcome(fault.status, `Fault injected by the EHR sandbox: ${fault.status}`);
  return { status: fault.status, headers, body };
}

/** The request body for the log: parsed JSON when it is JSON, else the text (or null when empty). */
function logBody(rawBody) {
  if (!rawBody.length) {
    return null;
  }
  const parsed = parseJson(rawBody);
  return parsed.error ? rawBody.toString('utf8') : parsed.value;
}

module.exports = { createApp };
