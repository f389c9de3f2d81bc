"""`python -m zapflow` is the `zapflow` CLI."""

from zapflow.cli import main

raise SystemExit(main())
