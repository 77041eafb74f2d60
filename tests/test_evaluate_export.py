"""``nextbest evaluate`` and ``nextbest export`` through the real CLI (subprocesses, real Redis)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from nextbest.export import CSV_COLUMNS
from tests.conftest import nextbest_cli

AS_OF = "2026-03-05T00:00:00Z"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("evsim")
    events, truth = d / "events.jsonl", d / "truth.jsonl"
    nextbest_cli(
        "simulate",
        "--customers",
        "400",
        "--days",
        "60",
        "--seed",
        "7",
        "--holdout-days",
        "7",
        "--out",
        str(events),
        "--truth",
        str(truth),
        env={},
    )
    return events, truth


def test_evaluate_json(sim: tuple[Path, Path], tmp_path: Path) -> None:
    events, truth = sim
    home = tmp_path / "home"
    env = {"NEXTBEST_HOME": str(home), "NEXTBEST_MODEL_MIN_EXAMPLES": "200"}
    out = nextbest_cli(
        "evaluate", str(events), "--truth", str(truth), "--json", "--holdout-days", "7", env=env
    )
    rep = json.loads(out.stdout)
    n_truth = len(truth.read_text().splitlines())
    assert rep["customers"] == n_truth
    assert rep["events"] == len(events.read_bytes().splitlines())
    for t in ("churn", "propensity"):
        r = rep[t]
        assert r["n"] == n_truth
        assert 0 < r["positives"] < n_truth
        for k in ("roc_auc", "oracle_auc", "recency_auc"):
            assert 0.0 <= r[k] <= 1.0
        assert r["log_loss"] > 0
        assert sum(r["sources"].values()) == n_truth
    assert rep["propensity"]["roc_auc"] > 0.5  # learnable
    assert rep["propensity"]["horizon_matches"] is True
    assert rep["churn"]["horizon_matches"] is False  # default 90-day horizon vs 7-day holdout
    assert "churn horizon is 90 days" in out.stderr
    # the user's data are not touched: the temporary Redis lives elsewhere
    assert not (home / "redis").exists()

    human = nextbest_cli("evaluate", str(events), "--truth", str(truth), env=env)
    assert human.stdout.splitlines()[0].split()[:4] == ["target", "n", "pos", "AUC"]
    assert "propensity" in human.stdout


def test_replay_then_export_jsonl_and_csv(sim: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim
    env = {
        "NEXTBEST_HOME": str(tmp_path / "home"),
        "NEXTBEST_METRICS_PORT": "0",
        "NEXTBEST_MODEL_MIN_EXAMPLES": "200",
    }
    summary = json.loads(nextbest_cli("replay", str(events), "--json", env=env).stdout)
    n = summary["customers"]
    assert n > 0

    out = nextbest_cli("export", "--as-of", AS_OF, env=env)
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == n
    assert len({r["customer_id"] for r in rows}) == n
    assert all(r["kind"] == "customer" and r["as_of"] == AS_OF for r in rows)
    for r in rows:
        assert set(r["scores"]) == {"churn", "propensity", "p_alive", "expected_purchases_90d"}
        for t in ("churn", "propensity"):
            s = r["scores"][t]
            assert 0.0 <= s["probability"] <= 1.0 and s["source"] in ("model", "prior")
        alive, expected = r["scores"]["p_alive"], r["scores"]["expected_purchases_90d"]
        if alive["source"] == "btyd":  # the population fit the dataflow published
            assert 0.0 <= alive["probability"] <= 1.0 and expected["value"] >= 0.0
        else:  # a customer without a purchase
            assert alive["source"] == "none" and alive["probability"] is None
    assert any(r["scores"][t]["source"] == "model" for r in rows for t in ("churn", "propensity"))
    assert any(r["scores"]["p_alive"]["source"] == "btyd" for r in rows)
    assert f"exported {n:,} profiles" in out.stderr

    # the same document as `nextbest profile`
    one = rows[0]
    doc = json.loads(nextbest_cli("profile", one["customer_id"], "--as-of", AS_OF, env=env).stdout)
    assert doc == one

    anon = nextbest_cli("export", "--as-of", AS_OF, "--include-anonymous", env=env)
    kinds = [json.loads(x)["kind"] for x in anon.stdout.splitlines()]
    assert kinds.count("customer") == n and kinds.count("anonymous") > 0

    csv_file = tmp_path / "out.csv"
    nextbest_cli("export", "--as-of", AS_OF, "--format", "csv", "--out", str(csv_file), env=env)
    table = list(csv.reader(io.StringIO(csv_file.read_text())))
    assert tuple(table[0]) == CSV_COLUMNS
    assert len(table) == n + 1
    by_id = {row[0]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in table[1:]}
    c = by_id[one["customer_id"]]
    assert float(c["churn_probability"]) == one["scores"]["churn"]["probability"]
    assert c["top_categories"] == "|".join(one["top_categories"])
    assert int(c["events_total"]) == one["events_total"]


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--as-of", "yesterday"],
        ["export", "--format", "xml"],
        ["export", "--out", "/no/such/dir/x.csv"],
        ["evaluate", "/no/such/events.jsonl", "--truth", "/no/such/truth.jsonl"],
        ["evaluate", "x.jsonl"],
        ["evaluate", "x.jsonl", "--truth", "t.jsonl", "--holdout-days", "-3"],
    ],
)
def test_bad_args_exit_2(args: list[str], tmp_path: Path) -> None:
    proc = nextbest_cli(*args, env={"NEXTBEST_HOME": str(tmp_path / "home")}, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


def test_evaluate_bad_truth_exit_2(sim: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = sim
    bad = tmp_path / "truth.jsonl"
    bad.write_text('{"customer_id": "c-1"}\n')
    proc = nextbest_cli(
        "evaluate",
        str(events),
        "--truth",
        str(bad),
        env={"NEXTBEST_HOME": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 2
    assert "not a truth row" in proc.stderr
