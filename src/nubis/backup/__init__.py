"""Backup and restore of a whole archive (issue 13): an online snapshot of the index, the blobs
copied incrementally as they are stored, and a manifest that ties the two together. Key
material never enters a backup: docs/backup.md gives the rules for backing keys up apart."""
