"""``python -m cbcn.cli``: the same command line as the ``cbcn`` script (e.g. under ``torchrun``)."""
from cbcn.cli import main

raise SystemExit(main())
