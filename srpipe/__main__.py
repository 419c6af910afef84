"""`python -m srpipe` is the `srpipe` command."""

from srpipe.cli import main

raise SystemExit(main())
