"""The real-world corpus of the tests and benchmarks: pydicom's test files and the
``pydicom-data`` package (the test extra), the objects other systems made, oddities included.

Listed from their folders, as ``pydicom.data.get_testdata_files("*")`` lists them, without that
function's digest check of every file it might download, which costs seconds.
"""

from __future__ import annotations

from pathlib import Path


def testdata_paths() -> list[Path]:
    """Every file of pydicom's test files and of pydicom-data (DICOM or not), sorted by name."""
    from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources

    found = set((Path(DATA_ROOT) / "test_files").glob("*"))
    for source in external_data_sources().values():
        found.update(Path(p) for p in source.get_paths("*", DataTypes.DATASET))
    resolved = {p.resolve() for p in found if p.suffix != ".py"}
    return sorted((p for p in resolved if p.is_file()), key=lambda p: (p.name, str(p)))


def part10_files() -> list[Path]:
    """The PS3.10 files (a preamble and ``DICM``) among :func:`testdata_paths`, one per name."""
    files: dict[str, Path] = {}
    for path in testdata_paths():
        with path.open("rb") as fp:
            if fp.read(132)[128:132] == b"DICM":
                files.setdefault(path.name, path)
    return list(files.values())
