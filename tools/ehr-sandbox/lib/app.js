'use strict';
/**
 * The sandbox as one request handler: state, routing between the control API and the FHIR endpoint, and the
 * pipeline every non-control request goes through:
 *
 *   read body -> log -> configured latency -> fault (status | drop answer now; delay waits) -> authenticate ->
 *   route (/fhir, ...) -> apply-then-fail replaces the real answer -> write, complete the log entry
 *
 * Faults act before authentication, as a proxy or an overloaded server would. A request still waiting (latency,
 * delay fault) when the sandbox is reset is dropped unprocessed: a test that gave up on a slow request must not
 * find it applied to the next test's fresh store.
 */
const { SandboxRepository } = require('./repository');
const { createCapabilities, checkStatement } = require('./capabilities');
const { createFhirEndpoint } = require('./fhir');
const { createControl } = require('./control');
const { FaultQueue } = require('./faults');
const { RequestLog } = require('./requestlog');
const { authenticate, securityFor } = require('./auth');
const { operationOutcome, outcomeAnswer, parseJson, readBody, sleep, writeAnswer } = require('./http');

/**
 * @param options - { token, latencyMs, profile } startup config; `profile` is a capability profile
 *   (capabilities.FULL_PROFILE by default)
 * @returns (req, res) => void, with `.state` for tests and the server
 */
function createApp(options = {}) {
  const startupConfig = { token: options.token || null, latencyMs: options.latencyMs ?? 0 };
  const capabilities = createCapabilities(options.profile);
  checkStatement(capabilities);

  const state = {
    config: { ...startupConfig },
    repo: new SandboxRepository(),
    faults: new FaultQueue(),
    log: new RequestLog(),
    /** Incremented by reset(); requests that began in an earlier epoch are dropped instead of processed. */
    epoch: 0,
    reset() {
      state.epoch += 1;
      state.repo.clear();
      state.faults.clear();
      state.log.clear();
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
      state.config = next;
    },
  };

  const control = createControl(state);
  const fhir = createFhirEndpoint({
    repo: state.repo,
    capabilities,
    security: () => securityFor(state.config),
  });

  /**
   * Everything outside /_control, by path prefix. A SMART Backend Services token endpoint would be one more
   * entry here (e.g. { prefix: '/auth/token', handle: smart.token, open: true }).
   */
  const ROUTES = [{ prefix: '/fhir', handle: (request) => fhir.handle(request), open: false }];

  async function serve(request) {
    const { pathname } = request.url;
    const route = ROUTES.find(({ prefix }) => pathname === prefix || pathname.startsWith(`${prefix}/`));
    if (!route) {
      return outcomeAnswer(404, `Nothing at ${pathname}; the FHIR base is /fhir`);
    }
    if (!route.open) {
      const refused = authenticate(state.config, request.method, pathname, request.headers);
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
