"""Storage tiers and their lifecycle (issue 5).

- :mod:`nubis.tiers.rules`: the ``tiers``, ``lifecycle`` and ``storage_prices`` settings parsed
  into tiers, rules and prices; which tier a study belongs in.
- :mod:`nubis.tiers.movers`: moving a blob between tiers (S3 storage classes, folders).
- :mod:`nubis.tiers.lifecycle`: the ``tier`` job's pass over the index, and pins.
- :mod:`nubis.tiers.reads`: when each study was last read, recorded cheaply.
- :mod:`nubis.tiers.report`: objects, bytes and monthly cost per tier, with a projection.
"""
