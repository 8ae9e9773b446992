"""Sealing: what is sealed opens only with its key and in its own record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from risk_engine.sealing import new_data_key, new_ref, open_record, seal_into

FIELDS = st.dictionaries(
    st.text(max_size=8), st.text(max_size=20) | st.integers(-(2**53), 2**53), max_size=4
)


@given(FIELDS)
def test_a_sealed_record_opens_with_its_key_only(personal: dict[str, object]) -> None:
    key, ref = new_data_key(), new_ref()
    record = {"record": "decision", "event_id": "e-1"}
    seal_into(record, personal, ref, key, "decision")
    assert record["ref"] == ref and isinstance(record["sealed"], str)
    assert open_record(record, {ref: key}) == {
        "record": "decision",
        "event_id": "e-1",
        "ref": ref,
        **personal,
    }
    # Another key (the user's was erased, a new profile has a new one) opens nothing.
    assert open_record(record, {ref: new_data_key()}) is None
    assert open_record(record, {}) is None


def test_a_sealed_blob_moved_to_another_record_does_not_open() -> None:
    key, ref = new_data_key(), new_ref()
    record = {"event_id": "e-1"}
    seal_into(record, {"user_id": "alice"}, ref, key)
    moved = {**record, "event_id": "e-2"}
    assert open_record(moved, {ref: key}) is None
    assert open_record(record, {ref: key}) == {"event_id": "e-1", "ref": ref, "user_id": "alice"}


def test_a_record_with_nothing_sealed_comes_back_as_it_is() -> None:
    record = {"event_id": "e-1", "label": "confirmed_fraud"}
    assert open_record(record, {}) is record
