"""`python -m harness` is the same as the `skoracle` console script."""

from harness.cli import main

raise SystemExit(main())
