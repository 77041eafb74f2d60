"""``python -m bench``: run the benchmarks and print the report (``--json``: one JSON object)."""

from bench.cli import main

raise SystemExit(main())
