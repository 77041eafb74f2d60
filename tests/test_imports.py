"""Admin imports over HTTP: POST /v1/catalog and POST /v1/traits (serving/imports.py)."""

from __future__ import annotations

import orjson
import redis
from fastapi.testclient import TestClient

from features.store import CATALOG_KEY, CATALOG_VERSION_KEY
from nextbest.runtime import ensure_topics
from nextbest.settings import Settings
from serving.app import create_app
from tests.chaos import consume_all


def test_catalog_and_traits_imports_report_each_rejected_row(
    redis_url: str, kafka_brokers: str
) -> None:
    salt = "import-test-salt-0123456789"
    settings = Settings.from_env(
        {"NEXTBEST_TOPIC_CLICKSTREAM": "imp-click", "NEXTBEST_IDENTITY_SALT": salt}
    )
    jsonl = {"Content-Type": "application/x-ndjson"}
    ensure_topics(kafka_brokers, ["imp-click"], 1)
    url = f"{redis_url}?db=15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    csv = "product_id,name,price,category\np-1,Shoe,30,shoes\n,Nameless,1,x\np-2,Hat,abc,hats\n"
    with TestClient(create_app(settings, url, kafka_brokers)) as api:
        got = api.post("/v1/catalog", content=csv, headers={"Content-Type": "text/csv"})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["loaded"] == 1 and body["rejected"] == 2
        assert [r["line"] for r in body["rejected_rows"]] == [3, 4]
        assert client.hkeys(CATALOG_KEY) == [b"p-1"]
        assert client.get(CATALOG_VERSION_KEY) == body["version"].encode()
        # nothing good: the catalogue stays as it was
        assert api.post("/v1/catalog", content="{}\n", headers=jsonl).json()["loaded"] == 0
        assert api.post("/v1/catalog", content="{}\n").status_code == 415
        assert api.post("/v1/catalog", content="", headers=jsonl).json()["error"] == "empty_body"
        assert client.hkeys(CATALOG_KEY) == [b"p-1"]

        rows = b'{"customer_id": "c1", "email": "Ann@Example.com", "loyalty_tier": "gold"}\n'
        rows += b'{"loyalty_tier": "gold"}\n'
        got = api.post("/v1/traits", params={"source": "crm"}, content=rows, headers=jsonl)
        assert got.status_code == 200, got.text
        assert got.json()["accepted"] == 1 and got.json()["rejected_rows"][0]["line"] == 2
        bad = api.post("/v1/traits", params={"source": "CRM!"}, content=rows, headers=jsonl)
        assert bad.status_code == 422
    sent = [orjson.loads(r) for r in consume_all(kafka_brokers, "imp-click", quiet=1)]
    assert [e["type"] for e in sent] == ["identify"]
    assert sent[0]["traits"]["loyalty_tier"] == "gold"
    assert "ann@example.com" not in str(sent[0]).lower()  # (a token, never the address)
    client.flushdb()
