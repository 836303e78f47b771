"""Security: the tamper-evident audit trail (issue 4); authentication and policy join it here."""
