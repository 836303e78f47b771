"""De-identification (PS3.15 Annex E): pure functions from a data set, a profile and a project
key to a de-identified data set and a report. No I/O; services decide when to apply them."""
