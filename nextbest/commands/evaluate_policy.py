"""``nextbest evaluate-policy DECISIONS... --outcomes FILE...``: off-policy evaluation of
next-best-action policies from the decision log (see :mod:`decisions.ope`).

Decision files hold one decision record per line; outcome files hold events, of which only
``decision_outcome`` events are read (the others are skipped and counted). A line that does not
decode is counted as rejected with its reason and reported on stderr; it never stops the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from nextbest.commands.common import UsageError, duration
from nextbest.settings import Settings

if TYPE_CHECKING:
    from decisions.ope import Report
    from schemas.decisions import DecisionRecord
    from schemas.events import Event

DEFAULT_POLICIES = ("greedy", "uniform", "logging")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate-policy",
        help="estimate from the decision log what other next-best-action policies would earn",
    )
    p.add_argument("decisions", nargs="+", metavar="DECISIONS", help="decision logs (JSONL)")
    p.add_argument(
        "--outcomes", nargs="+", required=True, metavar="FILE",
        help="event files (JSONL) with the decision_outcome events; other events are skipped",
    )  # fmt: skip
    p.add_argument(
        "--policy", action="append", type=_policy, metavar="POLICY",
        help="greedy, uniform, logging or action:ID; repeatable (default: greedy, uniform, "
        "logging)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=_window, default="7d", metavar="DURATION",
        help="attribution window after a decision for its conversion (default 7d)",
    )  # fmt: skip
    p.add_argument(
        "--reward", choices=("conversion", "value"), default="conversion",
        help="a conversion (1/0, default) or the conversions' summed value",
    )  # fmt: skip
    p.add_argument("--level", type=_level, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_evaluate_policy)


def _policy(raw: str) -> str:
    from decisions.ope import parse_policy

    try:
        parse_policy(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return raw


def _window(raw: str) -> int:
    ms = duration(raw)
    if ms <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {raw!r}")
    return ms


def _level(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {raw!r}")
    return v


# ---------------------------------------------------------------------------------------------
# reading


@dataclasses.dataclass
class _Lines:
    """What reading a set of files produced, besides the items: counts by reason."""

    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: int = 0
    per_file: Counter[str] = dataclasses.field(default_factory=Counter)
    first_error: dict[str, str] = dataclasses.field(default_factory=dict)

    def reject(self, path: Path, lineno: int, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self.per_file[str(path)] += 1
        self.first_error.setdefault(str(path), f"line {lineno}: {reason}: {detail[:120]}")

    def warnings(self, what: str) -> list[str]:
        """One line per file with rejected lines: how many, and the first."""
        return [
            f"nextbest: warning: {path}: {n:,} {what} line{'s' * (n != 1)} rejected "
            f"(first: {self.first_error[path]})"
            for path, n in self.per_file.items()
        ]


def _lines(paths: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    """The non-blank lines of the files, with their file and line number."""
    for path in paths:
        try:
            f = path.open("rb")
        except OSError as exc:
            raise UsageError(f"evaluate-policy: cannot read {path}: {exc.strerror}") from None
        with f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield path, lineno, line


def _decision_reason(line: bytes) -> str:
    """Why a line is not a decision record, as a short machine-readable reason."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if not isinstance(obj, dict):
        return "not_an_object"
    if obj.get("type", "decision") != "decision":
        return "not_a_decision"
    return "invalid_decision"


def read_decisions(paths: list[Path], log: _Lines) -> list[DecisionRecord]:
    from schemas.decisions import DecisionDecodeError, decode_decision

    out = []
    for path, lineno, line in _lines(paths):
        try:
            out.append(decode_decision(line))
        except DecisionDecodeError as exc:
            log.reject(path, lineno, _decision_reason(line), str(exc))
    return out


def read_outcomes(paths: list[Path], log: _Lines) -> list[Event]:
    from schemas.events import DecodeError, decode_event

    out = []
    for path, lineno, line in _lines(paths):
        ev = decode_event(line.rstrip(b"\r\n"))
        if isinstance(ev, DecodeError):
            log.reject(path, lineno, ev.reason, ev.detail)
        elif ev.type == "decision_outcome":
            out.append(ev)
        else:
            log.skipped += 1
    return out


# ---------------------------------------------------------------------------------------------
# the command


def cmd_evaluate_policy(args: argparse.Namespace, settings: Settings) -> int:
    """Evaluate the policies on the decision log and print the table (or JSON)."""
    from decisions.ope import evaluate

    decision_paths = [Path(p) for p in args.decisions]
    outcome_paths = [Path(p) for p in args.outcomes]
    for p in (*decision_paths, *outcome_paths):
        if not p.is_file():
            raise UsageError(f"evaluate-policy: no such file: {p}")
    dlog, olog = _Lines(), _Lines()
    records = read_decisions(decision_paths, dlog)
    if not records:
        names = ", ".join(map(str, decision_paths))
        raise UsageError(f"evaluate-policy: no decision records in {names} {_first(dlog)}")
    outcomes = read_outcomes(outcome_paths, olog)
    for line in (*dlog.warnings("decision"), *olog.warnings("outcome")):
        print(line, file=sys.stderr)
    report = evaluate(
        records, outcomes, list(dict.fromkeys(args.policy or DEFAULT_POLICIES)),
        window_ms=args.window, reward=args.reward, level=args.level,
    )  # fmt: skip
    doc = _document(report, dlog, olog)
    out = orjson.dumps(doc).decode() if args.json else "\n".join(report_lines(doc))
    sys.stdout.write(out + "\n")
    return 0


def _first(log: _Lines) -> str:
    return f"({next(iter(log.first_error.values()))})" if log.first_error else "(empty)"


def _document(report: Report, dlog: _Lines, olog: _Lines) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN becomes null)."""
    doc = dataclasses.asdict(report)
    doc["rejected"] = {"decisions": dict(dlog.rejected), "outcomes": dict(olog.rejected)}
    doc["join"]["skipped_events"] = olog.skipped
    doc["mean_reward"] = _null_nan(doc["mean_reward"])
    doc["estimates"] = [{k: _null_nan(v) for k, v in e.items()} for e in doc["estimates"]]
    return doc


def _null_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def report_lines(doc: dict[str, Any]) -> list[str]:
    """The human table of a report document."""
    pct = f"{doc['level']:.0%}"
    lines = [
        f"{'policy':<24} {'estimator':<9} {'estimate':>9} {pct + ' low':>9} {'high':>9} "
        f"{'n':>8} {'ESS':>10} {'max w':>7}"
    ]
    for e in doc["estimates"]:
        lines.append(
            f"{e['policy']:<24} {e['estimator']:<9} {_fmt(e['value']):>9} {_fmt(e['low']):>9} "
            f"{_fmt(e['high']):>9} {e['n']:>8,} {e['ess']:>10,.1f} "
            f"{_fmt(e['max_weight'], '.2f'):>7}"
        )
    j, rej = doc["join"], doc["rejected"]
    return [
        *lines,
        f"decisions: {doc['decisions']:,} read, {doc['used']:,} used, excluded: "
        f"{_counts(doc['excluded'])}; mean reward ({doc['reward']}): {_fmt(doc['mean_reward'])}",
        f"outcomes: {j['outcomes']:,} read, {j['matched']:,} matched, ignored: "
        f"{_counts(j['ignored'])}; window {doc['window_ms'] / 86_400_000:g} d",
        f"not applicable (records skipped by a policy): {_counts(doc['not_applicable'])}",
        f"rejected lines: decisions {_counts(rej['decisions'])}; outcomes "
        f"{_counts(rej['outcomes'])}; other events skipped: {j['skipped_events']:,}",
    ]


def _counts(d: dict[str, int]) -> str:
    """``a 3, b 1`` (non-zero counts), or ``none``."""
    return ", ".join(f"{k} {v:,}" for k, v in d.items() if v) or "none"
