"""``nextbest keys``: make API keys and check keys files (README, "Access control").

``nextbest keys new --name website --scopes collect`` prints a fresh key once (give it to the
caller; it is not stored anywhere) and the keys-file entry holding only its SHA-256; with
``--file F`` the entry is appended to ``F`` (created when missing). ``nextbest keys check F``
validates a keys file the way ``serve`` does at start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nextbest.commands.common import UsageError
from nextbest.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("keys", help="make API keys, check a keys file")
    verbs = k.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    new = verbs.add_parser("new", help="print a new API key and its keys-file entry")
    new.add_argument("--name", required=True, help="the key's name (a-z, 0-9, - _ .)")
    new.add_argument("--scopes", required=True, help="comma-separated scopes: collect, read, admin")
    new.add_argument("--file", help="append the entry to this keys file (created if missing)")
    check = verbs.add_parser("check", help="validate a keys file as serve does")
    check.add_argument("file", metavar="FILE")
    k.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from serving.auth import AuthConfigError, load_keys

    if args.verb == "check":
        try:
            ring = load_keys(args.file)
        except AuthConfigError as exc:
            raise UsageError(f"config error: {exc}") from None
        for key in ring.keys:
            print(f"{key.name}: {', '.join(sorted(key.scopes))}")
        return 0
    return _new(args)


def _new(args: argparse.Namespace) -> int:
    from serving.auth import SCOPES, AuthConfigError, key_digest, load_keys, new_key

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise UsageError(f"--scopes: expected some of {', '.join(SCOPES)}, got {args.scopes!r}")
    key = new_key()
    entry = (
        f'  - name: {args.name}\n    sha256: "{key_digest(key).hex()}"\n'
        f"    scopes: [{', '.join(scopes)}]\n"
    )
    if args.file:
        path = Path(args.file)
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        if not before.strip():
            text = "keys:\n" + entry
        else:
            text = before + ("" if before.endswith("\n") else "\n") + entry
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o600)
        try:
            load_keys(tmp)  # never leave a file serve would refuse
        except AuthConfigError as exc:
            tmp.unlink()
            raise UsageError(f"config error: {exc}".replace(str(tmp), str(path))) from None
        tmp.replace(path)
        print(f"added {args.name!r} to {path}", file=sys.stderr)
    else:
        print("add to the keys file (NEXTBEST_API_KEYS):", file=sys.stderr)
        print("keys:\n" + entry, end="", file=sys.stderr)
    print("the key (shown once; only its SHA-256 is kept):", file=sys.stderr)
    print(key)
    return 0
