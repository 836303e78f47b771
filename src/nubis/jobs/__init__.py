"""Background jobs that survive restarts and run on whichever node is free (issue 5).

- :mod:`nubis.jobs.store`: the ``jobs`` table (claims with SKIP LOCKED, leases, progress).
- :mod:`nubis.jobs.runner`: the runner thread of every ``nubis serve`` worker.
- :mod:`nubis.jobs.kinds`: ``reap``, ``verify``, ``tier``, and the schedule setting.
"""

from nubis.jobs.runner import JobContext, JobFailed, JobRunner
from nubis.jobs.store import Job, JobState, JobStore

__all__ = ["Job", "JobContext", "JobFailed", "JobRunner", "JobState", "JobStore"]
