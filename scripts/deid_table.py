"""Write src/nubis/deid/table_e1_1.json from the standard's machine-readable Table E.1-1.

Source: DICOM PS3.15 Annex E, Table E.1-1 "Application Level Confidentiality Profile Attributes",
as extracted from the standard's DocBook by the innolitics/dicom-standard project
(standard/confidentiality_profile_attributes.json). The copy used for the file in the package is
that repository's commit 7f4749d09ed3ef2fa70637d376d423a4b13523cd (its standard/ tree extracted
from edition 2024e; the table's file last changed with the 2024b update). The DICOM standard's
text is free to use.

    python scripts/deid_table.py PATH/TO/confidentiality_profile_attributes.json \
        --commit 7f4749d09ed3ef2fa70637d376d423a4b13523cd --edition 2024e

Only the action codes are carried over, verbatim; nothing is added by hand. The engine's
tests are driven from the file this writes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "src" / "nubis" / "deid" / "table_e1_1.json"

# innolitics' column names -> the option names of nubis's profiles (PS3.15 E.3).
OPTION_COLUMNS = {
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}
BASIC_CODES = {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
OPTION_CODES = {"K", "C"}
PLAIN_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
# The table's rows that stand for several tags: curve groups, overlay groups, private tags.
PATTERN_TAGS = {
    "(50XX,XXXX)": "50xxxxxx",
    "(60XX,3000)": "60xx3000",
    "(60XX,4000)": "60xx4000",
    "(GGGG,EEEE) WHERE GGGG IS ODD": "private",
}


def convert(rows: list[dict[str, str]], *, commit: str, edition: str) -> dict[str, object]:
    out = []
    for row in rows:
        match = PLAIN_TAG.fullmatch(row["tag"])
        if match:
            tag = match.group(1) + match.group(2)
        elif row["tag"] in PATTERN_TAGS:
            tag = PATTERN_TAGS[row["tag"]]
        else:
            raise SystemExit(f"unexpected tag form {row['tag']!r}")
        basic = row["basicProfile"]
        if basic not in BASIC_CODES:
            raise SystemExit(f"unexpected basic profile code {basic!r} for {row['tag']}")
        options = {}
        for column, option in OPTION_COLUMNS.items():
            if column in row:
                if row[column] not in OPTION_CODES:
                    raise SystemExit(f"unexpected option code {row[column]!r} for {row['tag']}")
                options[option] = row[column]
        unknown = set(row) - {"name", "tag", "stdCompIOD", "basicProfile", "id", *OPTION_COLUMNS}
        if unknown:
            raise SystemExit(f"unexpected columns {sorted(unknown)}")
        out.append({"tag": tag, "name": row["name"], "basic": basic, "options": options})
    out.sort(key=lambda r: r["tag"])
    return {
        "source": "DICOM PS3.15 Table E.1-1, via innolitics/dicom-standard "
        "standard/confidentiality_profile_attributes.json",
        "source_commit": commit,
        "edition": edition,
        "rows": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--edition", required=True)
    args = parser.parse_args()
    table = convert(json.loads(args.source.read_text()), commit=args.commit, edition=args.edition)
    # One row a line: a new edition's changes read as a diff of rows.
    head = {k: v for k, v in table.items() if k != "rows"}
    lines = [json.dumps(row, ensure_ascii=False) for row in table["rows"]]  # type: ignore[attr-defined]
    text = json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": [\n' + ",\n".join(lines)
    OUTPUT.write_text(text + "\n]}\n")
    print(f"{OUTPUT}: {len(table['rows'])} rows")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
