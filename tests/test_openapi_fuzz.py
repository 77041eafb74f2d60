"""A schema-driven fuzz (Schemathesis) of a served instance with data and API keys on.

Every operation of the OpenAPI document is called with requests generated from its schema
(examples, coverage of the boundaries, then random valid and invalid data). Schemathesis
fails a request that is valid by the schema yet rejected (``positive_data_acceptance``), any
5xx (``not_a_server_error``), a status the operation does not document
(``status_code_conformance``), a JSON answer that does not match its documented schema
(``response_schema_conformance``) and invalid data that is accepted
(``negative_data_rejection``). The budget is small here (a few seconds per operation); raise it
with ``NEXTBEST_FUZZ_EXAMPLES`` for a longer run, change the seed with ``NEXTBEST_FUZZ_SEED``
(1 in the suite), leave operations out with ``NEXTBEST_FUZZ_EXCLUDE`` (paths, comma-separated)
or test one with ``NEXTBEST_FUZZ_ONLY`` (a path).

``POST /v1/events`` states the event contract as its body (:mod:`schemas.jsonschema`). The rules
JSON Schema cannot state are kept out of the generator's reach, not weakened: the served instance
runs with ``NEXTBEST_MAX_FUTURE=36500d``, so no ``ts`` valid by the schema (before 2100) is a
``future_timestamp`` (the production default, 1 d, refuses a ``ts`` more than a day ahead of the
time of receipt; the schema's description says so); the 16 KiB per event, the 1 MiB body and the
nesting depth of ``properties`` are far beyond what the generator draws, and are documented in the
schema and the README.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.fuzz import build_corpus, seed_profiles
from serving.auth import key_digest, new_key
from tests.conftest import REPO

KEY = new_key()
EXAMPLES = int(os.environ.get("NEXTBEST_FUZZ_EXAMPLES", "12"))
SEED = os.environ.get("NEXTBEST_FUZZ_SEED", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, kafka_brokers: str
) -> Iterator[str]:
    """``nextbest serve`` with data in its Redis, a broker, and one key of every scope."""
    home: Path = tmp_path_factory.mktemp("fuzz-serve")
    keys = home / "keys.yaml"
    keys.write_text(
        f'keys:\n  - name: fuzz\n    sha256: "{key_digest(KEY).hex()}"\n'
        "    scopes: [collect, read, admin]\n"
    )
    seed_profiles(redis_url, build_corpus(5, customers=30, days=7))
    port = _free_port()
    env = {
        **os.environ,
        "NEXTBEST_HOME": str(home),
        "NEXTBEST_REDIS_URL": redis_url,
        "NEXTBEST_KAFKA_BROKERS": kafka_brokers,
        "NEXTBEST_API_KEYS": str(keys),
        "NEXTBEST_LOG_LEVEL": "WARNING",
        # (a ts up to 2100 is valid by the schema: the clock-relative rule stays out of reach)
        "NEXTBEST_MAX_FUTURE": "36500d",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "nextbest", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err, err.decode()


#: What the run checks (Schemathesis' names; see the module docstring).
CHECKS = (
    "not_a_server_error,status_code_conformance,positive_data_acceptance,"
    "response_schema_conformance,negative_data_rejection,content_type_conformance"
)


#: 413 is how the API refuses a body over its documented size (Schemathesis' list of
#: rejections lacks it).
CONFIG = (
    """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]
"""
    + "".join(
        f"[checks.{name}]\nenabled = {'true' if name in CHECKS.split(',') else 'false'}\n"
        for name in (
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
            "positive_data_acceptance",
            "missing_required_header",
            "unsupported_method",
            "allow_header_conformance",
            "use_after_free",
            "ensure_resource_availability",
            "ignored_auth",
            "object_level_authorization",
        )
    )
    + """
# The import routes take a file as text: every text is a valid body by the schema (their rows
# are reported one by one), so Schemathesis' "invalid" bodies (an object sent as text) are not
# invalid to them. The other checks still run. (Per-operation settings need the checks chosen
# in this file, not with --checks, which would override them.)
[[operations]]
include-path-regex = "^/v1/(catalog|traits)$"
[operations.checks.negative_data_rejection]
enabled = false
"""
)


def test_api_matches_its_schema(served: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    exclude = os.environ.get("NEXTBEST_FUZZ_EXCLUDE", "")
    only = os.environ.get("NEXTBEST_FUZZ_ONLY")
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config),
        "run", f"{served}/openapi.json",
        *(arg for path in exclude.split(",") if path for arg in ("--exclude-path", path)),
        *(["--include-path", only] if only else []),
        "--header", f"X-API-Key: {KEY}",
        "--max-examples", str(EXAMPLES), "--seed", SEED, "--workers", "1",
        "--generation-database", "none", "--no-color", "--request-timeout", "10",
        "--phases", "examples,coverage,fuzzing", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    assert "No issues found" in out or " passed" in out, out[-5000:]
    print(out[out.find("SUMMARY") :])  # (shown with pytest -s: operations, phases, cases)
