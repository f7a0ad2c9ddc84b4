'use strict';
/**
 * The request log: what clients sent to the sandbox and what it answered, for tests to assert on
 * ("the dispatcher sent exactly one transaction", "it retried after Retry-After", "it sent a bearer token").
 *
 * Entries are recorded when a request arrives and completed when it is answered, so a request held by a delay
 * fault is visible with `status: null`. Authorization values are cut to their scheme: the log is served without
 * authentication. `refusal` is null, or `{kind, detail}` when the sandbox refused the request (or an entry of its
 * Bundle) for using something its CapabilityStatement does not declare, or for breaking a vendor rule (see
 * capabilities.js). The log keeps the most recent MAX_ENTRIES entries so long benchmark runs stay bounded.
 */
const MAX_ENTRIES = 10000;

class RequestLog {
  #entries = [];
  #sequence = 0;

  /** Records an incoming request; returns the entry to complete with `answered()` or `dropped()`. */
  record({ method, url, headers, body }) {
    const entry = {
      seq: ++this.#sequence,
      time: new Date().toISOString(),
      method,
      path: url.pathname,
      query: queryObject(url.searchParams),
      headers: redact(headers),
      body,
      status: null,
      dropped: false,
      fault: null,
      refusal: null,
      durationMs: null,
    };
    const started = process.hrtime.bigint();
    this.#entries.push(entry);
    if (this.#entries.length > MAX_ENTRIES) {
      this.#entries.shift();
    }
    const finish = () => {
      entry.durationMs = Number(process.hrtime.bigint() - started) / 1e6;
    };
    return {
      entry,
      answered(status) {
        entry.status = status;
        finish();
      },
      dropped() {
        entry.dropped = true;
        finish();
      },
      fault(action) {
        entry.fault = action;
      },
      /** Records why the request was refused: `{kind, detail}`; undefined (not refused) changes nothing. */
      refused(refusal) {
        if (refusal) {
          entry.refusal = { kind: refusal.kind, detail: refusal.detail };
        }
      },
    };
  }

  list() {
    return this.#entries.map((entry) => ({ ...entry }));
  }

  clear() {
    this.#entries = [];
  }
}

function queryObject(searchParams) {
  const query = {};
  for (const key of new Set(searchParams.keys())) {
    query[key] = searchParams.getAll(key);
  }
  return query;
}

function redact(headers) {
  const copy = { ...headers };
  if (typeof copy.authorization === 'string') {
    copy.authorization = copy.authorization.split(' ')[0];
  }
  return copy;
}

module.exports = { RequestLog };
