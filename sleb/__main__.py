"""`python -m sleb ...`: see `sleb.cli`."""

from .cli import main

raise SystemExit(main())
