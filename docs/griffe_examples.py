"""A griffe extension for the API reference: pax's docstrings title their doctests `Example:`.

Griffe's Google parser reads only `Examples:` as an examples section (code rendered as code);
`Example:` would become an admonition whose doctest output reads as Markdown links. The
docstrings stay as they are; this renames the section title in griffe's copy only.
"""

import re
from typing import Any

import griffe

_TITLE = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


class ExampleSections(griffe.Extension):
    """Reads a docstring's `Example:` section as `Examples:`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _TITLE.sub(r"\1Examples:", obj.docstring.value)
