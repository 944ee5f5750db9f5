"""`mdmq devices import` through the real entry point against PostgreSQL: CSV and JSON Lines, batches, the
good rows stored and each bad one printed with its line and reason, the exit codes."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models.ids import new_id
from models.tables import Device
from tests.helpers import run_mdmq

TOPIC = "com.apple.mgmt.External.2c3e8f1a-4b5d-4e6f-8a9b-0c1d2e3f4a5b"
FCM_TOKEN = "cWq1nB2xT0aP3lVt9mZkYd:APA91b" + "y" * 134


@pytest.fixture
def mdmq(postgres_url: str) -> Any:
    def run(*args: str) -> tuple[int, Any, str]:
        result = run_mdmq("devices", "import", *args, env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=120)
        out = json.loads(result.stdout) if "--json" in args and result.returncode in (0, 1) else result.stdout
        return result.returncode, out, result.stderr

    return run


def devices_of(engine: Engine, organization_id: str) -> dict[str, Device]:
    with Session(engine) as s:
        return {d.id: d for d in s.exec(select(Device).where(Device.organization_id == organization_id))}


def test_a_csv_file_is_imported_in_batches_and_its_bad_rows_named_by_line(
    pg: Engine, mdmq: Any, tmp_path: Path
) -> None:
    ids = [new_id() for _ in range(4)]
    iphone_token = secrets.token_hex(32)
    lines = [
        "id,platform,token,pushMagic,topic,labels",
        f"{ids[0]},ios,{iphone_token},magic-0,{TOPIC},kiosk;floor-3",
        f"{ids[1]},android,{FCM_TOKEN},,,",
        f"{ids[2]},ios,not-hex,magic-2,{TOPIC},",
        f"{ids[3]},aosp,{secrets.token_hex(11)},,,",
        "nope,aosp,abc,,,",
    ]
    file = tmp_path / "fleet.csv"
    file.write_text("\n".join(lines) + "\n")

    code, out, err = mdmq(str(file), "--org", "acme", "--batch", "2", "--json")

    assert code == 1, err
    assert (out["stored"], out["created"], out["updated"]) == (3, 3, 0)
    refused = {r["line"]: (r["id"], r["field"]) for r in out["refused"]}
    assert refused == {4: (ids[2], "token"), 6: ("nope", "id")}
    assert not_anywhere(iphone_token, out, err)
    stored = devices_of(pg, "acme")
    assert set(stored) == {ids[0], ids[1], ids[3]}
    assert stored[ids[0]].labels == ["kiosk", "floor-3"]
    assert stored[ids[0]].topic == TOPIC


def test_a_json_lines_file_and_the_human_summary(pg: Engine, mdmq: Any, tmp_path: Path) -> None:
    ids = [new_id() for _ in range(3)]
    rows = [
        {"id": ids[0], "platform": "android", "token": FCM_TOKEN, "labels": ["fleet"]},
        {"id": ids[1], "platform": "macos", "token": secrets.token_hex(32), "pushMagic": "m", "topic": TOPIC},
        {"id": ids[2], "platform": "android", "token": FCM_TOKEN, "topic": TOPIC},
    ]
    file = tmp_path / "fleet.data"  # no telling extension: JSON by its first character
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")

    code, out, err = mdmq(str(file), "--org", "acme")

    assert code == 1, err
    assert "stored 2 device(s) (2 enrolled, 0 updated), refused 2" in out
    assert f"line 3: {ids[2]} topic: only an Apple device has one" in out
    assert "line 4: - row:" in out
    assert set(devices_of(pg, "acme")) == set(ids[:2])

    code, out, err = mdmq(str(tmp_path / "fleet.jsonl"), "--org", "acme")
    assert code == 64
    assert "cannot be read" in err


def test_every_row_stored_exits_0_and_a_second_import_updates(pg: Engine, mdmq: Any, tmp_path: Path) -> None:
    device_id = new_id()
    file = tmp_path / "one.jsonl"
    file.write_text(json.dumps({"id": device_id, "platform": "aosp", "token": secrets.token_hex(11)}) + "\n")

    assert mdmq(str(file), "--org", "acme", "--json")[:2] == (
        0,
        {"stored": 1, "created": 1, "updated": 0, "refused": []},
    )
    assert mdmq(str(file), "--org", "acme", "--json")[:2] == (
        0,
        {"stored": 1, "created": 0, "updated": 1, "refused": []},
    )
    code, _, err = mdmq(str(file), "--org", "no such org!")
    assert code == 64
    assert "--org" in err


def not_anywhere(secret: str, *outputs: Any) -> bool:
    return all(secret not in json.dumps(output) for output in outputs)


def test_values_the_database_cannot_store_and_unreadable_lines_are_refused_rows(
    pg: Engine, mdmq: Any, tmp_path: Path
) -> None:
    ids = [new_id() for _ in range(6)]
    aosp = {"platform": "aosp", "token": secrets.token_hex(11)}
    lines = [
        json.dumps({"id": ids[0]} | aosp).encode(),
        json.dumps({"id": ids[1], "labels": ["a\u0000b"]} | aosp).encode(),  # NUL, escaped
        b'{"id": "' + ids[2].encode() + b'", "platform": "aosp", "token": "' + b"ab\\ud800" + b'"}',
        json.dumps({"id": ids[3], "labels": ["tab\there"]} | aosp).encode(),  # a control character
        b'{"id": "' + ids[4].encode() + b'", "platform": "aosp", "token": "\xff\xfe"}',  # not UTF-8
        json.dumps({"id": ids[5]} | aosp).encode(),
    ]
    file = tmp_path / "fleet.jsonl"
    file.write_bytes(b"\n".join(lines) + b"\n")

    code, out, err = mdmq(str(file), "--org", "acme", "--json")

    assert code == 1, err
    assert "Traceback" not in err
    assert out["stored"] == 2
    refused = {r["line"]: r["field"] for r in out["refused"]}
    assert refused == {2: "labels.0", 3: "token", 4: "labels.0", 5: "row"}
    assert set(devices_of(pg, "acme")) == {ids[0], ids[5]}


def test_a_csv_line_that_cannot_be_read_is_a_refused_row(pg: Engine, mdmq: Any, tmp_path: Path) -> None:
    ids = [new_id() for _ in range(4)]
    lines = [
        b"id,platform,token,labels",
        f"{ids[0]},aosp,{secrets.token_hex(11)},kiosk".encode(),
        f"{ids[1]},aosp,{secrets.token_hex(11)},".encode() + b"\xc3\x28",  # not UTF-8
        f"{ids[2]},aosp,{secrets.token_hex(11)},".encode() + b"x" * 200_000,  # beyond the csv field limit
        f"{ids[3]},aosp,{secrets.token_hex(11)},a\x00b".encode(),  # NUL
        f"{new_id()},aosp,{secrets.token_hex(11)},bell\x07".encode(),  # a control character
    ]
    file = tmp_path / "fleet.csv"
    file.write_bytes(b"\n".join(lines) + b"\n")

    code, out, err = mdmq(str(file), "--org", "acme", "--json")

    assert code == 1, err
    assert "Traceback" not in err
    refused = {r["line"]: r["field"] for r in out["refused"]}
    assert refused == {3: "row", 4: "row", 5: "labels.0", 6: "labels.0"}
    assert set(devices_of(pg, "acme")) == {ids[0]}
