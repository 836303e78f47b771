"""The hybrid edge node (issue 13, docs/edge.md): a nubis in the hospital that stores first,
forwards everything to the cloud archive through the replication outbox (forward_to is the
replication target), evicts what the cloud confirmed by its keep rules (evict), and reads an
evicted object back from the cloud, verified by SHA-256 (cloud, read_through)."""
