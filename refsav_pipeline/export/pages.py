"""The Jinja2 environment of every page the export writes (templates in ``export/templates/``).

HTML is autoescaped, so a caption or path from the data can never become markup: there is no
escape call to forget. Markdown (``.md``: the dataset card) is not HTML and is not escaped; its
table cells go through the ``cell`` filter. Values are formatted in Python (numbers,
percentages) or by the filters here, and a missing value (``None``) shows as nothing.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jinja2


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell: one line, no column break."""
    return " ".join(str(value).split()).replace("|", "\\|")


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("refsav_pipeline.export", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                            disabled_extensions=("md",), default=True),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value)
    env.filters.update(cell=md_cell, json=compact_json)
    return env


def render(template: str, **context: Any) -> str:
    """The template ``export/templates/<template>`` filled with ``context``."""
    return environment().get_template(template).render(**context)
