"""``python -m bench``: run the benchmarks and print the report (``--json``: one JSON object).

``python -m bench fuzz [...]`` runs the fuzz instead (the same as ``python -m bench.fuzz``; see
:mod:`bench.fuzz`); it is never part of the default benchmark run.
"""

import sys

if sys.argv[1:2] == ["fuzz"]:
    from bench.fuzz import main as fuzz_main

    raise SystemExit(fuzz_main(sys.argv[2:]))

from bench.cli import main

raise SystemExit(main())
