"""Characters that FHIR strings and XHTML narratives cannot carry.

R4 strings exclude the control characters below U+0020 other than tab, line feed and
carriage return, and a narrative is XML, which also excludes U+FFFE, U+FFFF and lone
surrogates (JSON can encode them as `\\ud800`). Input holding any of them is refused
with the path of the string; text written into a narrative passes through `xhtml_text`,
so that even content nobody checked cannot make `text.div` unparseable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import escape
from typing import Any

NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def unsafe_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(FHIRPath, 'U+0000') for every string in `value` (JSON) holding a character FHIR and XML forbid."""
    if isinstance(value, str):
        found = NOT_XML.search(value)
        if found:
            yield path, f"U+{ord(found.group()):04X}"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from unsafe_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unsafe_strings(item, f"{path}[{index}]")


def xhtml_text(text: str) -> str:
    """`text` as XHTML character data: markup escaped, characters XML cannot hold replaced by U+FFFD."""
    return escape(NOT_XML.sub("\ufffd", text), quote=False)
