"""The pieces of at-least-once delivery: the sink's ledger and its recovery after a crash, the
outbox that survives its own stage, and restart notices."""

from __future__ import annotations

import json

import numpy as np

from remembrall.pipeline.delivery import Outbox, RestartWatch, SeqLedger, restarts_message
from remembrall.pipeline.messages import Message
from remembrall.stages.sink import SinkStage
from tests.learning_harness import ipc, spec


def test_ledger_dedups_out_of_order_and_moves_past_a_gap_that_never_fills() -> None:
    ledger = SeqLedger(max_above=4)
    assert [ledger.accept("a", s) for s in (0, 1, 3, 4, 3, 1)] == [True, True, True, True, False, False]
    assert ledger.watermark("a") == 1 and ledger.above("a") == [3, 4]
    for seq in (5, 6, 7):  # seq 2 never comes: past max_above the ledger gives up on it, counted
        ledger.accept("a", seq)
    assert ledger.watermark("a") == 7 and ledger.skipped == {"a": 1}
    assert not ledger.accept("a", 2), "a copy arriving after the give-up is not written"
    back = SeqLedger.from_plain(json.loads(json.dumps(ledger.to_plain())))
    assert back.watermark("a") == 7 and back.watermark("b") == -1
    ack = ledger.ack_message("a")
    assert ack.kind == "ack" and ack.get("through") == 7 and ack.get("above") == []


def test_outbox_keeps_messages_on_disk_until_acknowledged(tmp_path) -> None:
    store = tmp_path / "outbox"
    box = Outbox(4, store)
    for i in range(3):
        box.put(f"cam:{i}", Message("sample", stream="cam", seq=i, fields={"id": f"cam:{i}", "label": "a"},
                                    arrays=[np.full(8, i, np.float32)]))
    assert box.ack(["cam:1", "unknown"]) == 1 and len(list(store.glob("*.npz"))) == 2
    (store / "999999999999.npz").write_bytes(b"PK not a message")  # cut by a crash elsewhere
    again = Outbox(4, store)
    assert again.load(lambda msg: msg.get("id")) == 2
    assert [m.get("id") for m in again.pending()] == ["cam:0", "cam:2"]
    assert float(again.pending()[1].arrays[0][0]) == 2.0
    assert list(store.glob("*.corrupt")), "the unreadable file is moved aside, not loaded or deleted"
    again.put("cam:3", Message("sample", stream="cam", seq=3, fields={"id": "cam:3"}))
    assert len(list(store.glob("*.npz"))) == 3, "a new file does not overwrite a loaded one"
    assert again.ack_through(10) == 0, "id keys are not sequence numbers"


def test_restart_watch_reports_each_restart_once() -> None:
    watch = RestartWatch(["infer", "sink"])
    assert watch.restarted(restarts_message({"infer": 0, "sink": 0, "select": 3})) == []
    assert watch.restarted(restarts_message({"infer": 1, "sink": 0})) == ["infer"]
    assert watch.restarted(restarts_message({"infer": 1, "sink": 0})) == []
    assert watch.restarted(Message("stages", fields={"restarts": "garbage"})) == []


def test_a_restarted_sink_knows_what_it_wrote_and_cuts_a_half_line(tmp_path) -> None:
    stage = SinkStage(spec(tmp_path, "sink", "sink", {"in": f"pull+bind:{ipc(tmp_path, 'sink')}"}, {}))
    lines = [json.dumps({"stream": "cam", "seq": s}) + "\n" for s in (0, 1, 2, 4)]
    stage.path.write_text("".join(lines) + '{"stream": "cam", "se')
    stage.state_path.parent.mkdir(parents=True, exist_ok=True)
    stage.state_path.write_text(json.dumps({"offset": len(lines[0]), "streams": {"cam": {"w": 0, "above": []}}}))
    stage._recover()
    assert stage.path.read_text() == "".join(lines), "the cut line is gone, the whole ones stay"
    assert stage.ledger.watermark("cam") == 2 and stage.ledger.above("cam") == [4]
    stage.state_path.write_text("{not json")  # a damaged checkpoint: the whole file is read instead
    stage.ledger = SeqLedger()
    stage._recover()
    assert stage.ledger.watermark("cam") == 2 and stage.ledger.above("cam") == [4]
    stage.close()
