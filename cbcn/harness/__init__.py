"""The reproduction harness: the paper's tables as experiments, run, measured, stored and reported.

- ``experiments``, ``claims``: every row of Tables 2-5 with the paper's numbers, and the claims
  and inconsistencies a report checks;
- ``sweep``, ``reproduce``: ``cbcn reproduce``: select, train, measure, store, report;
- ``store``: one result record per experiment, written atomically, claimed before training;
- ``hardware``: a model's hardware profile, from ``cost`` (operations, bytes), ``measure``
  (timing, memory), ``energy`` (NVML, RAPL) and ``machine`` (the machine description);
- ``summary``: ``cbcn summary``, the per-layer cost table;
- ``tables``, ``report``, ``plots``, ``markdown``: pandas tables from the store, rendered as
  Markdown, HTML and figures;
- ``provenance``: code revision and package versions of every number.
"""
