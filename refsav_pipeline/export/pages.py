"""The Jinja2 environment of every page the export writes (templates in ``export/templates/``).

HTML is autoescaped, so a caption or path from the data can never become markup: there is no
escape call to forget. Values are formatted in Python (numbers, percentages) and reach the
templates as plain strings; a missing value (``None``) shows as nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("refsav_pipeline.export", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value)


def render(template: str, **context: Any) -> str:
    """The template ``export/templates/<template>`` filled with ``context``."""
    return environment().get_template(template).render(**context)
