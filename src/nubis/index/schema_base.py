"""The metadata every index table is declared on, and the column type of a DICOM UID."""

from __future__ import annotations

from sqlalchemy import MetaData, String

__all__ = ["UID", "metadata"]

metadata = MetaData()

# A DICOM UI value is at most 64 characters (PS3.5 Table 6.2-1).
UID = String(64)
