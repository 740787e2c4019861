"""Federated against central: ``report.md`` for a finished run folder.

python -m report RUN_DIR [--central-epochs N] [--nodes N] [--device cpu|cuda|auto]
"""

from report.build import ReportError, make_report

__all__ = ["ReportError", "make_report"]
