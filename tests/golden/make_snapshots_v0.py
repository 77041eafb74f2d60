"""Wrote ``snapshots-v0.pickle``: recovery snapshots of every keyed step in the positional-tuple
format (format 0), run once by the code of commit 1f92709, before versioned snapshots. Kept as the
record of how the file was made; run with today's code it writes today's formats."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataflows.records import In, RawRecord
from dataflows.steps.clock import ClockLogic
from dataflows.steps.identity import DeviceLogic
from dataflows.steps.models import ModelLogic
from dataflows.steps.profile import ProfileLogic
from dataflows.steps.rfm import RfmLogic
from features.clock import EventClock
from features.rfm import rfm_point
from models.labels import DAY_MS, Example
from nextbest.settings import Settings
from schemas.events import decode_event

T0 = 1_767_225_600_000


def _in(line: bytes) -> In:
    ev = decode_event(line)
    assert not hasattr(ev, "reason"), ev
    return In(ev, RawRecord(line, "test"))  # type: ignore[arg-type]


def main() -> None:
    cfg = Settings.from_env({}).flow_config(recovery=True, write_interval_ms=0)
    out: dict[str, bytes] = {}
    profile = ProfileLogic(None, cfg)
    for i, t in enumerate(("page_view", "add_to_cart", "purchase")):
        body = (
            f'{{"event_id":"e{i}","type":"{t}","ts":{T0 + i * DAY_MS},'
            f'"customer_id":"c1","total":12.5,"category":"toys"}}'
        ).encode()
        profile.on_batch([("c:c1", _in(body))])
    out["profile"] = profile.snapshot()
    device = DeviceLogic(None, cfg)
    device.on_batch(
        [("a:d1", _in(b'{"event_id":"a1","type":"page_view","ts":%d,"anonymous_id":"d1"}' % T0))]
    )
    out["identity"] = device.snapshot()
    clock = ClockLogic(EventClock(600_000), True, "customer_clock", cfg.horizons, 7)
    clock.on_batch([([("c:c1", "retention", T0 + 400 * DAY_MS)], T0)])
    clock.on_batch([([], T0 + DAY_MS)])
    out["customer_clock"] = clock.snapshot()
    model = ModelLogic(None, cfg)
    examples = [
        Example("propensity", f"c:{i}", T0, T0 + i, {"x": float(i % 2)}, i % 2) for i in range(30)
    ]
    model.on_batch([("ex", examples), ("time", T0 + 3 * DAY_MS + 15)])
    out["models"] = model.snapshot()
    owner = RfmLogic(None, cfg)
    owner.on_batch([(None, rfm_point(i + 1, 10.0 * i, T0 + i)) for i in range(20)])
    out["rfm"] = owner.snapshot()
    path = Path(__file__).with_name("snapshots-v0.pickle")
    path.write_bytes(pickle.dumps(out))
    print(f"wrote {path}: {', '.join(f'{k} {len(v)} B' for k, v in out.items())}")


if __name__ == "__main__":
    main()
