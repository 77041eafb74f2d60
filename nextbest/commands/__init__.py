"""The ``nextbest`` commands, one module each.

Each module has ``register(sub)``, which adds its subcommand (flags, help, handler) to the
parser's subparsers; ``nextbest.cli`` assembles them in the order of :data:`COMMANDS`. What
the commands share (usage errors, signal handling, argument types) is in
:mod:`nextbest.commands.common`.
"""

from __future__ import annotations

from nextbest.commands import (
    catalog,
    decide,
    deliver,
    demo,
    erase,
    evaluate,
    evaluate_nba,
    evaluate_policy,
    evaluate_recs,
    export,
    import_traits,
    keys,
    profile,
    recommend,
    replay,
    run,
    segments,
    serve,
    simulate,
)

#: The commands in the order ``nextbest --help`` lists them.
COMMANDS = (
    replay,
    run,
    deliver,
    serve,
    keys,
    erase,
    profile,
    decide,
    recommend,
    catalog,
    import_traits,
    segments,
    simulate,
    export,
    evaluate,
    evaluate_policy,
    evaluate_nba,
    evaluate_recs,
    demo,
)
