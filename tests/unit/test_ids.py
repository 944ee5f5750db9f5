"""Ids: one `new_ids` call is a run its first id and count give back (`unsent_create` keeps just those)."""

from __future__ import annotations

from models.ids import id_run, is_id, new_ids


def test_a_run_of_new_ids_is_given_back_by_its_first_id_and_count() -> None:
    ids = new_ids(1_000)

    assert id_run(ids[0], len(ids)) == ids


def test_a_run_wraps_its_counter_as_new_ids_does() -> None:
    first = "6b1530aa" + "0123456789" + "fffffe"

    run = id_run(first, 3)

    assert run == [first, "6b1530aa0123456789ffffff", "6b1530aa0123456789000000"]
    assert all(is_id(i) for i in run)
