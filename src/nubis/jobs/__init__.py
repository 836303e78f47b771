"""Background jobs that survive restarts and run on whichever node is free (issue 5).

- :mod:`nubis.jobs.store`: the ``jobs`` table (claims with SKIP LOCKED, leases, progress).
- :mod:`nubis.jobs.context`: the handler contract (``JobContext``, ``JobFailed``, ``Handler``).
- :mod:`nubis.jobs.runner`: the runner thread of every ``nubis serve`` worker.
- :mod:`nubis.jobs.kinds`: ``reap``, ``verify``, ``tier``... and their handlers.
- :mod:`nubis.jobs.schedule`: the ``jobs_schedule`` setting (a leaf: nubis.config reads it).

This file imports nothing, so importing the leaf ``nubis.jobs.schedule`` loads nothing else.
"""
