"""The steps of the profile dataflow: each step's Logic in a module of its own, delegating to the
pure code of ``features/`` and ``models/``; :mod:`dataflows.flow` wires them."""

from __future__ import annotations

from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflows.effects import Effect

RETAIN = StatefulBatchLogic.RETAIN
DISCARD = StatefulBatchLogic.DISCARD

#: (key, (key, item)): the logic builders do not get the key, so it travels in the value too.
Keyed = tuple[str, tuple[str, Any]]
#: What a keyed step emits (see :mod:`dataflows.effects`).
Out = Effect
