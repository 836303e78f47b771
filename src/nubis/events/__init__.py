"""Telling other systems what changed: webhook deliveries from the change feed (issue 15)."""
