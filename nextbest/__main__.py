"""``python -m nextbest``."""

from nextbest.cli import main

raise SystemExit(main())
