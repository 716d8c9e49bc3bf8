"""The report layer: figures and the lab report (HTML, Markdown, JSON).

The lab hands down plain data (:class:`LabResult` with one
:class:`StudyEntry` per study); this layer knows nothing of how the
results were made. Studies draw their figures with
:mod:`cnnlab.report.figures` and describe their data with
:func:`cnnlab.report.provenance.data_source`.
"""

from cnnlab.report.model import STATUSES, LabResult, Provenance, StudyEntry
from cnnlab.report.provenance import data_source, dataset_checksum, machine_info
from cnnlab.report.render import format_value, results_data, write_report

__all__ = [
    "STATUSES", "LabResult", "Provenance", "StudyEntry", "data_source", "dataset_checksum",
    "machine_info", "format_value", "results_data", "write_report",
]
