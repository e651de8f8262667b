"""Reports people open: HTML and CSV from inspection results (torch-free: PIL, numpy)."""

from modelfab.reports.inspection import (
    InspectionRow,
    decode_heatmap,
    overlay,
    save_images,
    write_csv,
    write_report,
)

__all__ = [
    "InspectionRow",
    "decode_heatmap",
    "overlay",
    "save_images",
    "write_csv",
    "write_report",
]
