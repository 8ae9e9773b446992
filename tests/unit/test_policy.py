"""The policy: action classes, thresholds to outcomes, floors, and refusal of bad files."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from risk_engine.decision import Acr, Outcome
from risk_engine.errors import ConfigurationError
from risk_engine.events import KNOWN_ACTIONS
from risk_engine.policy import Policy, load_policy, parse_policy, save_policy

EXPECTED_CLASSES = {
    "view_account": "read",
    "login": "login",
    "transfer": "money",
    "add_payee": "money",
    "change_password": "account",
    "change_email": "account",
    "change_mfa": "account",
    "grant_role": "privilege",
    "export_data": "privilege",
    "create_api_key": "privilege",
}

VALID = """
version = "test-1"
default_class = "default"

[classes.login]
actions = ["login"]
step_up = 0.9
deny = 0.99
required_acr = "mfa"
max_age = 900

[classes.money]
actions = ["transfer"]
step_up = 0.8
deny = 0.95
required_acr = "phr"
fail_mode = "deny"

[classes.default]
step_up = 0.7
deny = 0.9

[floors]
impossible_travel = "step_up"
session_hijack = "deny"
"""


@pytest.fixture
def policy() -> Policy:
    return parse_policy(tomllib.loads(VALID), "test")


def test_bundled_policy_loads() -> None:
    bundled = load_policy()
    assert bundled.version
    assert bundled.default_class in bundled.classes
    for cls in bundled.classes.values():
        assert 0.0 < cls.step_up < cls.deny <= 1.0


def test_every_known_action_has_its_class_in_the_bundled_policy() -> None:
    bundled = load_policy()
    assert set(EXPECTED_CLASSES) == set(KNOWN_ACTIONS)
    for action, expected in EXPECTED_CLASSES.items():
        name, cls = bundled.class_of(action)
        assert name == expected, action
        assert action in cls.actions


def test_account_takeover_actions_require_phishing_resistant_proof() -> None:
    bundled = load_policy()
    for action in ("change_password", "change_email", "change_mfa", "grant_role"):
        assert bundled.class_of(action)[1].required_acr is Acr.PHR


def test_bundled_floors_make_strong_signals_at_least_step_up() -> None:
    bundled = load_policy()
    assert bundled.floors["impossible_travel"].rank >= Outcome.STEP_UP.rank
    assert bundled.floors["session_hijack"] is Outcome.DENY
    assert bundled.floors["quiet_hour_takeover"] is Outcome.STEP_UP
    assert bundled.floors["first_privileged_action"] is Outcome.STEP_UP
    # A targeted takeover's look-alike login and the payee from its minute-old device
    # are stepped up whatever their score.
    for code, action in (
        ("lookalike_device", "login"),
        ("fresh_device", "add_payee"),
        ("amount_far_above_history", "transfer"),
    ):
        assert bundled.floors[code] is Outcome.STEP_UP
        assert bundled.table.decide(action, 0.0, [code])[1] is Outcome.STEP_UP


@pytest.mark.parametrize("action", ["approve_invoice", "", "LOGIN", "login "])
def test_unknown_action_gets_the_default_class(policy: Policy, action: str) -> None:
    name, cls = policy.class_of(action)
    assert name == "default"
    assert cls is policy.classes["default"]
    assert load_policy().class_of(action)[0] == load_policy().default_class


@pytest.mark.parametrize(
    ("action", "score", "expected"),
    [
        ("login", 0.0, Outcome.ALLOW),
        ("login", 0.8999, Outcome.ALLOW),
        ("login", 0.9, Outcome.STEP_UP),
        ("login", 0.98, Outcome.STEP_UP),
        ("login", 0.99, Outcome.DENY),
        ("login", 1.0, Outcome.DENY),
        ("transfer", 0.85, Outcome.STEP_UP),
        ("transfer", 0.96, Outcome.DENY),
        ("something_else", 0.75, Outcome.STEP_UP),
        ("something_else", 0.65, Outcome.ALLOW),
    ],
)
def test_thresholds_give_outcomes(
    policy: Policy, action: str, score: float, expected: Outcome
) -> None:
    assert policy.decide(action, score, [])[1] is expected


def test_bundled_thresholds_give_outcomes() -> None:
    bundled = load_policy()
    for name, cls in bundled.classes.items():
        action = cls.actions[0] if cls.actions else "no-such-action"
        assert bundled.decide(action, cls.step_up - 1e-6, []) == (name, Outcome.ALLOW)
        assert bundled.decide(action, cls.step_up, []) == (name, Outcome.STEP_UP)
        assert bundled.decide(action, cls.deny, []) == (name, Outcome.DENY)


def test_floors_raise_the_outcome_and_never_lower_it(policy: Policy) -> None:
    assert policy.decide("login", 0.1, ["impossible_travel"])[1] is Outcome.STEP_UP
    assert policy.decide("login", 0.1, ["session_hijack"])[1] is Outcome.DENY
    assert policy.decide("login", 0.1, ["impossible_travel", "session_hijack"])[1] is Outcome.DENY
    assert policy.decide("login", 0.995, ["impossible_travel"])[1] is Outcome.DENY
    assert policy.decide("login", 0.1, ["new_device", "unusual_hour"])[1] is Outcome.ALLOW


def test_ceilings_cap_the_score_and_floors_still_raise() -> None:
    bundled = load_policy()
    deny = bundled.classes["read"].deny
    assert bundled.ceilings == {"crowded_network": Outcome.STEP_UP}
    assert bundled.decide("view_account", deny, [])[1] is Outcome.DENY
    assert bundled.decide("view_account", deny, ["crowded_network"])[1] is Outcome.STEP_UP
    assert bundled.decide("view_account", 0.1, ["crowded_network"])[1] is Outcome.ALLOW
    # A floor is evidence of its own, a ceiling only tempers the score: the floor wins.
    both = ["crowded_network", "session_hijack"]
    assert bundled.decide("view_account", deny, both)[1] is Outcome.DENY


def test_a_ceiling_of_deny_is_refused() -> None:
    data = load_policy().model_dump(mode="json")
    data["ceilings"] = {"crowded_network": "deny"}
    with pytest.raises(ConfigurationError, match="ceiling"):
        parse_policy(data, "test")


def test_class_settings_are_read(policy: Policy) -> None:
    login, money, default = (policy.classes[k] for k in ("login", "money", "default"))
    assert login.max_age == 900 and login.required_acr is Acr.MFA
    assert money.required_acr is Acr.PHR and money.fail_mode is Outcome.DENY
    assert default.required_acr is Acr.MFA and default.max_age == 300
    assert default.fail_mode is Outcome.STEP_UP


def test_toml_round_trip(policy: Policy, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    save_policy(policy, path)
    again = load_policy(path)
    assert again.model_dump() == policy.model_dump()
    assert again.class_of("transfer")[0] == "money"


def _broken(**replace: str) -> str:
    text = VALID
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


BROKEN: dict[str, tuple[str, str]] = {
    "step-up-equals-deny": (
        _broken(**{"step_up = 0.9\n": "step_up = 0.99\n"}),
        "must be below deny",
    ),
    "step-up-above-deny": (
        _broken(**{"step_up = 0.8\n": "step_up = 0.97\n"}),
        "must be below deny",
    ),
    "unknown-acr": (_broken(**{'required_acr = "phr"': 'required_acr = "sms"'}), "required_acr"),
    "duplicate-action": (
        _broken(**{'actions = ["transfer"]': 'actions = ["transfer", "login"]'}),
        "'login' is in both",
    ),
    "extra-class-key": (_broken(**{"max_age = 900": "max_age = 900\ncolour = 'red'"}), "colour"),
    "extra-top-key": (
        _broken(**{'version = "test-1"': 'version = "test-1"\nowner = "me"'}),
        "owner",
    ),
    "bad-toml": (_broken(**{"step_up = 0.7": "step_up = = 0.7"}), "not valid TOML"),
    "threshold-zero": (_broken(**{"step_up = 0.7": "step_up = 0.0"}), "step_up"),
    "threshold-above-one": (_broken(**{"deny = 0.9\n": "deny = 1.5\n"}), "deny"),
    "unknown-default-class": (
        _broken(**{'default_class = "default"': 'default_class = "other"'}),
        "default_class",
    ),
    "unknown-floor-outcome": (
        _broken(**{'session_hijack = "deny"': 'session_hijack = "block"'}),
        "session_hijack",
    ),
    "missing-version": (_broken(**{'version = "test-1"': ""}), "version"),
    "max-age-zero": (_broken(**{"max_age = 900": "max_age = 0"}), "max_age"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_invalid_policy_file_is_refused_naming_the_problem(tmp_path: Path, case: str) -> None:
    text, problem = BROKEN[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_policy(path)
    assert problem in caught.value.message
    assert str(path) in caught.value.message


def test_missing_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_policy(tmp_path / "absent.toml")


def test_parse_policy_names_the_source() -> None:
    data: dict[str, Any] = tomllib.loads(VALID)
    data["classes"]["login"]["deny"] = 0.5
    with pytest.raises(ConfigurationError, match=r"policy inline-source is invalid"):
        parse_policy(data, "inline-source")


def test_the_table_decides_as_the_policy_and_compares_by_value(policy: Policy) -> None:
    table = policy.table
    for action in ("login", "transfer", "launch_rocket"):
        assert table.class_of(action) == policy.class_of(action)
        for score in (0.0, 0.75, 0.85, 0.97, 0.999):
            for codes in ([], ["impossible_travel"], ["session_hijack"]):
                assert table.decide(action, score, codes) == policy.decide(action, score, codes)
    # Equal policies (a copy, a reload) have equal tables; a changed one does not.
    assert policy.model_copy() == policy
    assert parse_policy(tomllib.loads(VALID), "again") == policy
    changed = parse_policy(tomllib.loads(VALID.replace("step_up = 0.9", "step_up = 0.5")), "x")
    assert changed.table != table and changed != policy
