"""The Markdown of the report and of the comparison, rendered from the Jinja2 templates in
``report/templates/``, and the small helpers both share.

Autoescaping is off: the output is Markdown, not HTML. Text that comes from a run folder
(a run's name, a knob's value, a status) goes through the ``cell`` filter inside tables, so a
``|`` or a line break in it cannot split a row or end the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from task.objective import Objective

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("report", "templates"),
    autoescape=False,
    trim_blocks=True,  # a line holding only {% ... %} leaves no empty line behind
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the report instead of printing nothing
)


def render_markdown(template: str, **context: Any) -> str:
    """The template ``report/templates/<template>`` filled in with ``context``."""
    return _ENV.get_template(template).render(**context)


def cell(value: Any) -> str:
    """``value`` as one Markdown table cell: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(value).splitlines()).replace("|", r"\|")


def shown(value: Any) -> str:
    """A knob's value as written in the tables; the empty string shows as ``""``."""
    return '""' if value == "" else str(value)


def first_at_target(objective: Objective, values: Sequence[float]) -> int | None:
    """The index of the first value that meets the objective's target (None: never)."""
    return next((i for i, value in enumerate(values) if objective.reached(value)), None)


_ENV.filters.update(cell=cell, shown=shown, num=format)  # num: {{ x|num(".2f") }} is f"{x:.2f}"
