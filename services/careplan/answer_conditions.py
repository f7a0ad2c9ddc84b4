"""Conditions over the assessment remembered by the answers and variables they read.

Applicability, goal and screening conditions, and the Questionnaire's plausibility
constraints, are FHIRPath over the assessment, and fhirpathpy takes 0.2-0.6 ms for each:
the costliest step of planning. Almost all of them read the assessment only through
`%resource.item.where(linkId='...')` (or `item.where(linkId='...')` from the assessment
as context), and perhaps a variable the caller gives (`%patientAgeMonths`), so their
result is a function of those items and values alone, and a clinic's assessments repeat
the same answers (not pregnant, no visible vessels, atrophic) over and over. `reads`
proves that property from the parsed expression; `ConditionResults` then keeps each
result under a digest of the expression, the JSON of the items it reads and the values
of the variables it reads, in a cache bounded in bytes. An expression that might read
anything else (another path, `today()`, a variable the caller does not give, an unknown
function) is simply evaluated every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from fhirpathpy.parser import parse

from services.fhir.bytecache import ByteCache, digest

PURE_FUNCTIONS = frozenset({
    "where", "select", "exists", "empty", "not", "count", "first", "last", "single", "tail", "skip", "take",
    "all", "allTrue", "anyTrue", "allFalse", "anyFalse", "distinct", "isDistinct", "ofType", "hasValue",
    "toString", "toInteger", "toDecimal", "toBoolean", "startsWith", "endsWith", "contains", "matches",
    "length", "upper", "lower", "iif", "subsetOf", "supersetOf", "intersect", "exclude", "union", "combine",
    "children", "descendants", "repeat", "is", "as",
})
"""Functions whose result depends only on their input and arguments (not `today()`, `now()`, `resolve()`,
`memberOf()`, `trace()`, `extension()`...)."""

ANSWER_VARIABLES = frozenset({"resource", "context"})


@dataclass(frozen=True)
class Reads:
    link_ids: frozenset[str]
    """The top-level items read, by linkId."""
    variables: frozenset[str]
    """The variables read other than `%resource` and `%context`."""


@lru_cache(maxsize=1024)
def reads(expression: str) -> Reads | None:
    """What `expression` reads, or None when it may read anything else."""
    try:
        tree = parse(expression)
    except Exception:  # noqa: BLE001 - a bad expression is reported by the evaluator, not here
        return None
    link_ids: set[str] = set()
    variables: set[str] = set()
    if not _only_item_reads(tree, link_ids, variables, in_arguments=False) or not link_ids:
        return None
    return Reads(frozenset(link_ids), frozenset(variables))


def _only_item_reads(node: dict[str, Any], link_ids: set[str], variables: set[str], *, in_arguments: bool) -> bool:
    kind = node.get("type")
    if kind == "InvocationExpression":
        link_id = _item_by_link_id(node)
        if link_id is not None:
            link_ids.add(link_id)
            return True
    if kind == "ExternalConstantTerm":
        name = _identifier(node)
        if name is None or name in ANSWER_VARIABLES:
            return False  # %resource other than through an item, or a quoted name
        variables.add(name)
        return True
    if kind == "TermExpression" and _is_context_items(node):
        return in_arguments  # inside a function's arguments, `item` is a child of what is already read
    if kind == "InvocationTerm" and not in_arguments:
        return False  # another path from the context resource, `$this` at the top, or `today()`
    if kind == "Functn":
        name = _identifier(node["children"][0]) if node.get("children") else None
        if name not in PURE_FUNCTIONS:
            return False
    inside = in_arguments or kind == "ParamList"
    return all(_only_item_reads(child, link_ids, variables, in_arguments=inside)
               for child in node.get("children", []))


def _item_by_link_id(node: dict[str, Any]) -> str | None:
    """'x' when `node` is exactly `%resource.item.where(linkId = 'x')` (or `%context...`, or `item.where(...)`
    with the assessment as context)."""
    children = node.get("children", [])
    if len(children) != 2 or children[1].get("type") != "FunctionInvocation" or not _is_items(children[0]):
        return None
    function = children[1]["children"][0]
    if _identifier(function["children"][0]) != "where" or len(function["children"]) != 2:
        return None
    arguments = function["children"][1].get("children", [])
    if len(arguments) != 1 or arguments[0].get("type") != "EqualityExpression" \
            or arguments[0].get("terminalNodeText") != ["="]:
        return None
    left, right = arguments[0]["children"]
    if left.get("text") != "linkId" or right.get("children", [{}])[0].get("type") != "LiteralTerm":
        return None
    literal: str = right["text"]
    if not (literal.startswith("'") and literal.endswith("'")) or "\\" in literal or len(literal) < 2:
        return None
    return literal[1:-1]


def _is_items(node: dict[str, Any]) -> bool:
    """`%resource.item`, `%context.item`, or `item` of the context resource."""
    if node.get("type") == "TermExpression":
        return _is_context_items(node)
    inner = node.get("children", [])
    if node.get("type") != "InvocationExpression" or len(inner) != 2:
        return False
    source, member = inner
    return (source.get("type") == "TermExpression" and source.get("text") in ("%resource", "%context")
            and member.get("type") == "MemberInvocation" and _identifier(member["children"][0]) == "item")


def _is_context_items(node: dict[str, Any]) -> bool:
    """A term that is the bare member `item`."""
    term = node.get("children", [{}])[0]
    member = term.get("children", [{}])[0] if term.get("type") == "InvocationTerm" else {}
    return member.get("type") == "MemberInvocation" and _identifier(member) == "item"


def _identifier(node: dict[str, Any]) -> str | None:
    while node.get("type") != "Identifier" and node.get("children"):
        node = node["children"][0]
    return node.get("text") if node.get("type") == "Identifier" else None


MAX_KEYED_ITEMS_BYTES = 16 * 1024
"""Items longer than this as JSON are not remembered: real answers are a few hundred bytes, and a padded
assessment would only cost the hashing and evict real entries."""


class ConditionResults:
    """Results by (expression, the items it reads), at most `max_bytes` of them, least recently used dropped
    first; the key is a digest of the two (services.fhir.bytecache)."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.cache: ByteCache[tuple[Any, ...]] = ByteCache("condition-results", max_bytes)

    def key(self, expression: str, resource: Any, variables: dict[str, Any]) -> bytes | None:
        """Where the result is kept, or None when it cannot be kept (see `reads`): the expression must read
        the assessment it is evaluated on, and be given every variable it reads."""
        read = reads(expression)
        if read is None or not isinstance(resource, dict) or not read.variables <= variables.keys() \
                or any(variables[name] is not resource for name in ANSWER_VARIABLES & variables.keys()):
            return None
        items = [item for item in resource.get("item") or [] if isinstance(item, dict)
                 and item.get("linkId") in read.link_ids]
        values = {name: variables[name] for name in read.variables}
        try:
            keyed = orjson.dumps([resource.get("resourceType"), items, values], option=orjson.OPT_SORT_KEYS)
        except TypeError:  # a variable that is not plain data: evaluated every time
            return None
        return digest(expression, keyed) if len(keyed) <= MAX_KEYED_ITEMS_BYTES else None

    def get(self, key: bytes) -> list[Any] | None:
        found = self.cache.get(key)
        return list(found) if found is not None else None

    def put(self, key: bytes, result: list[Any]) -> None:
        self.cache.put(key, tuple(result), len(orjson.dumps(result, default=repr)))
