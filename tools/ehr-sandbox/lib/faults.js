'use strict';
/**
 * The fault queue: failures a test asks the sandbox to produce on upcoming requests.
 *
 * Reliability tests of the careplan dispatcher need an EHR that fails on cue and in a known order, so faults are
 * a FIFO: each request takes the first pending fault that matches it (method, path prefix), and a fault is used
 * up after `times` requests. Faults apply to everything outside /_control.
 *
 * Actions:
 *   status          answer `status` (OperationOutcome body, optional Retry-After) without processing
 *   delay           wait `delayMs`, then process normally
 *   drop            destroy the connection without answering and without processing
 *   apply-then-fail process and store normally, then answer `status` (default 500) or drop if `drop: true`
 */
const ACTIONS = new Set(['status', 'delay', 'drop', 'apply-then-fail']);

/** Checks and normalises one fault from the control API; throws an Error with a readable message. */
function normaliseFault(input) {
  if (!input || typeof input !== 'object' || Array.isArray(input)) {
    throw new Error('each fault must be a JSON object');
  }
  const { action, match = {}, times = 1 } = input;
  if (!ACTIONS.has(action)) {
    throw new Error(`fault.action must be one of ${[...ACTIONS].join(', ')}; got ${JSON.stringify(action)}`);
  }
  if (typeof match !== 'object' || Array.isArray(match) || match === null) {
    throw new Error('fault.match must be an object like {"method": "POST", "path": "/fhir"}');
  }
  if (!Number.isInteger(times) || times < 1) {
    throw new Error('fault.times must be a positive integer');
  }
  const fault = { action, match: {}, times };
  if (match.method !== undefined) {
    fault.match.method = String(match.method).toUpperCase();
  }
  if (match.path !== undefined) {
    fault.match.path = String(match.path);
  }
  if (action === 'status' || action === 'apply-then-fail') {
    const status = input.status ?? (action === 'status' ? undefined : 500);
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw new Error(`fault.status must be an HTTP status code for action "${action}"`);
    }
    fault.status = status;
  }
  if (action === 'apply-then-fail' && input.drop) {
    fault.drop = true;
  }
  if (action === 'delay') {
    if (!Number.isFinite(input.delayMs) || input.delayMs < 0) {
      throw new Error('fault.delayMs must be a non-negative number for action "delay"');
    }
    fault.delayMs = input.delayMs;
  }
  if (input.retryAfter !== undefined) {
    fault.retryAfter = String(input.retryAfter);
  }
  if (input.outcome !== undefined) {
    if (input.outcome?.resourceType !== 'OperationOutcome') {
      throw new Error('fault.outcome must be an OperationOutcome');
    }
    fault.outcome = input.outcome;
  }
  return fault;
}

class FaultQueue {
  #pending = [];

  /** Validates all faults first, so a bad list adds nothing. */
  add(faults) {
    if (!Array.isArray(faults)) {
      throw new Error('body must be {"faults": [ ... ]}');
    }
    const normalised = faults.map(normaliseFault);
    this.#pending.push(...normalised);
    return normalised;
  }

  /** Consumes one use of the first fault matching the request, or returns undefined. */
  take(method, path) {
    const index = this.#pending.findIndex((fault) => matches(fault.match, method, path));
    if (index < 0) {
      return undefined;
    }
    const fault = this.#pending[index];
    fault.times -= 1;
    if (fault.times === 0) {
      this.#pending.splice(index, 1);
    }
    return fault;
  }

  list() {
    return this.#pending.map((fault) => ({ ...fault }));
  }

  clear() {
    this.#pending = [];
  }
}

function matches(match, method, path) {
  return (!match.method || match.method === method) && (!match.path || path.startsWith(match.path));
}

module.exports = { FaultQueue, normaliseFault };
