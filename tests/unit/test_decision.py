"""The decision's JSON form: written out by hand, exactly what pydantic's dump says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from risk_engine.decision import Acr, Challenge, Decision, Outcome, Reason

text = st.text(max_size=12)
reasons = st.lists(st.builds(Reason, code=text, detail=text), max_size=4)
challenges = st.none() | st.builds(
    Challenge,
    id=text,
    expires_at=text,
    required_acr=st.sampled_from(Acr),
    max_age=st.integers(1, 86400),
    www_authenticate=text,
)
decisions = st.builds(
    Decision,
    event_id=text,
    score=st.floats(0.0, 1.0),
    decision=st.sampled_from(Outcome),
    reasons=reasons,
    required_acr=st.none() | st.sampled_from(Acr),
    max_age=st.none() | st.integers(1, 86400),
    model_version=text,
    decision_id=text,
    policy_version=text,
    action_class=text,
    degraded=st.booleans(),
    challenge=challenges,
    features=st.none() | st.dictionaries(text, st.floats(allow_nan=False), max_size=3),
    shadow=st.none() | st.dictionaries(text, st.none() | text | st.floats(0, 1), max_size=3),
)


@given(decisions)
def test_contract_dict_is_pydantics_dump_key_for_key(decision: Decision) -> None:
    expected = decision.model_dump(mode="json", exclude_none=True)
    assert list(decision.contract_dict().items()) == list(expected.items())


@pytest.mark.parametrize(("features", "shadow"), [(False, False), (True, False), (False, True)])
def test_contract_dict_leaves_out_the_extras_asked_to(features: bool, shadow: bool) -> None:
    decision = Decision(
        event_id="e",
        score=0.5,
        decision=Outcome.ALLOW,
        model_version="m",
        features={"x": 1.0},
        shadow={"score": 0.1},
    )
    body: dict[str, Any] = decision.contract_dict(features=features, shadow=shadow)
    assert ("features" in body) is features
    assert ("shadow" in body) is shadow
