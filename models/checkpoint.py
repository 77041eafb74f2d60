"""The checkpoint codec of the online models: canonical pickle bytes (equal values give equal
bytes), the ``NBMODEL1`` framing with its JSON metadata, and a restricted unpickler."""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import struct
from typing import Any, Final

import msgspec
from river.proba.base import Distribution

MAGIC: Final = b"NBMODEL1"
#: Version of the checkpoint layout and of the pickled :class:`OnlineModel` attributes.
FORMAT_VERSION: Final = 1
PICKLE_PROTOCOL: Final = 5
#: Kept entries of the metric history and of the drift events.


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: corrupt, truncated, or of an incompatible format."""


#: Attributes a checkpoint's state must have.
_STATE_KEYS: Final = frozenset(
    {"target", "pipeline", "estimator", "examples_seen", "_recent", "_detector", "history"}
)


def _unseeded(cls: Any, state: dict[str, Any]) -> Any:
    """Rebuild an unseeded River distribution (its generator freshly seeded, as River does)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    obj._rng = random.Random(None)
    return obj


class _Pickler(pickle.Pickler):
    """Leaves out the generators of unseeded River distributions.

    River's tree splitters create ``proba.Gaussian()`` with ``seed=None``, whose
    ``random.Random`` is seeded from the OS and never used by the model; pickling its state
    would make otherwise identical checkpoints differ.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Distribution) and getattr(obj, "seed", 0) is None:
            state = {k: v for k, v in vars(obj).items() if k != "_rng"}
            return _unseeded, (type(obj), state)
        return NotImplemented


def _loads(data: bytes) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue()


_STR_OPS: Final = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _int(arg: object) -> int:
    assert isinstance(arg, int)
    return arg


def _canonical_pickle(obj: Any) -> bytes:
    """Pickle bytes that depend only on the values and the sharing of mutable objects.

    Pickle memoises by identity, so whether two equal strings are one object (say a feature
    name that came from one example or another, or a dict key that is also a class's name)
    shows in the bytes: a model restored from a snapshot and trained on would write other bytes
    than the same model never pickled. So the stream is rewritten: every string after the first
    of its value becomes a reference to the first, unused memo entries are dropped, and the rest
    is renumbered (protocol 5, without frames, which are optional).
    """
    raw = _dumps(obj)
    ops = list(pickletools.genops(raw))
    first: dict[str, int] = {}  # string value -> memo id of its first occurrence
    alias: dict[int, int] = {}  # memo id of a repeated string -> memo id of the first
    used: set[int] = set()
    memo_ids: set[int] = set()
    items: list[tuple[int, int | bytes]] = []  # (0, raw op) | (1, put memo id) | (2, get memo id)
    pushed: tuple[str, int | None] | None = None  # the string just pushed, its first's memo id
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(raw)
        name = op.name
        if name in _STR_OPS:
            value = str(arg)
            dup = first.get(value)
            if dup is None:
                items.append((0, raw[pos:end]))
            else:
                used.add(dup)
                items.append((2, dup))
            pushed = (value, dup)
            continue
        if name == "MEMOIZE" or name.endswith("PUT"):
            oid = len(memo_ids) if name == "MEMOIZE" else _int(arg)
            memo_ids.add(oid)
            if pushed is not None and pushed[1] is not None:
                alias[oid] = pushed[1]  # the repeated string is not memoised again
            else:
                if pushed is not None:
                    first[pushed[0]] = oid
                items.append((1, oid))
        elif name.endswith("GET"):
            target = alias.get(_int(arg), _int(arg))
            used.add(target)
            items.append((2, target))
        elif name == "FRAME" or (name == "PROTO" and pos == 0):
            continue  # (re-written below; does not separate a string from its MEMOIZE)
        else:
            items.append((0, raw[pos:end]))
        pushed = None
    out = [b"\x80\x05"]
    new_id: dict[int, int] = {}
    for kind, val in items:
        if kind == 0:
            assert isinstance(val, bytes)
            out.append(val)
        elif kind == 1:
            assert isinstance(val, int)
            if val in used:
                new_id[val] = len(new_id)
                out.append(b"\x94")  # MEMOIZE
        else:
            assert isinstance(val, int)
            n = new_id[val]
            out.append(b"h" + bytes((n,)) if n < 256 else b"j" + struct.pack("<I", n))
    return b"".join(out)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CheckpointError(f"a checkpoint is bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise CheckpointError("not a model checkpoint (bad magic)")
    start = len(MAGIC) + 4
    if len(data) < start:
        raise CheckpointError("truncated checkpoint")
    (n,) = struct.unpack(">I", data[len(MAGIC) : start])
    if len(data) < start + n:
        raise CheckpointError("truncated checkpoint")
    try:
        meta = msgspec.json.decode(data[start : start + n])
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"corrupt checkpoint metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError("corrupt checkpoint metadata: not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"incompatible checkpoint format {meta.get('format')!r} (expected {FORMAT_VERSION})"
        )
    payload = data[start + n :]
    if len(payload) != meta.get("payload_bytes"):
        raise CheckpointError("truncated checkpoint: payload size mismatch")
    return meta, payload


def checkpoint_meta(data: bytes) -> dict[str, Any]:
    """A checkpoint's metadata, read without unpickling the model.

    Raises
    ------
    CheckpointError
        When the bytes are not a checkpoint of this format (the payload is not verified).

    Examples
    --------
    >>> from models.online import OnlineModel
    >>> meta = checkpoint_meta(OnlineModel("churn").to_checkpoint(version=1, now_ms=0))
    >>> meta["target"], meta["pipeline"], meta["version"], meta["examples_seen"]
    ('churn', 'logreg', 1, 0)
    """
    meta, _ = _split(data)
    return meta


#: Packages whose globals a checkpoint may reference (any name).
_ALLOWED_ROOTS: Final = frozenset({"river", "models"})
#: Other globals a checkpoint may reference: containers, generators, NumPy reconstruction.
_ALLOWED_GLOBALS: Final = frozenset(
    {
        ("array", "_array_reconstructor"),
        ("array", "array"),
        ("collections", "Counter"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("copyreg", "_reconstructor"),
        ("functools", "partial"),
        ("random", "Random"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        *(
            ("builtins", name)
            for name in (
                "bool",
                "bytearray",
                "bytes",
                "complex",
                "dict",
                "float",
                "frozenset",
                "int",
                "list",
                "object",
                "range",
                "set",
                "slice",
                "str",
                "tuple",
            )
        ),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the globals of River, this package and :data:`_ALLOWED_GLOBALS`.

    This limits what a tampered checkpoint can call; it does not make untrusted bytes safe
    (the checkpoint store must be trusted, like the code that reads it).
    """

    def find_class(self, module: str, name: str) -> Any:
        if module.partition(".")[0] in _ALLOWED_ROOTS or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint references a disallowed global {module}.{name}")


# Pickles reference ``_unseeded`` by the module path it always had.
_unseeded.__module__ = "models.online"
