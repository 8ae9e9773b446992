"""The Freeman et al. baseline: smoothing and backoff on tiny hand-built histories."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from risk_engine.events import Event, parse_event
from risk_engine.geo import GeoLocator
from risk_engine.offline.freeman import FreemanScorer, Population, freeman_backtest, log_ratio
from risk_engine.offline.logs import LogReport

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
HOME_IP = "81.2.69.160"  # GB, 81.2.69.0/24
SAME_NET_IP = "81.2.69.161"  # the same /24
OTHER_GB_IP = "2.125.160.216"  # GB, another /24
SE_IP = "89.160.20.112"  # another country
START = datetime(2026, 1, 5, tzinfo=UTC)


def event(n: int, ip: str, *, user: str = "u-1", ua: str = CHROME, success: bool = True) -> Event:
    return parse_event(
        {
            "event_id": f"e-{user}-{n}",
            "timestamp": (START + timedelta(minutes=n)).isoformat(),
            "user_id": user,
            "action": "login",
            "ip": ip,
            "device": {"user_agent": ua},
            "success": success,
        }
    )


@pytest.fixture(scope="module")
def geo() -> GeoLocator:
    return GeoLocator()


def trained(geo: GeoLocator, *, user_prior: bool = False) -> FreemanScorer:
    """A user with ten logins from one address and one browser, nobody else."""
    scorer = FreemanScorer(geo, user_prior=user_prior)
    for n in range(10):
        scorer.learn(event(n, HOME_IP))
    return scorer


def test_usual_ip_scores_below_new_ip_in_usual_network_below_new_country(
    geo: GeoLocator,
) -> None:
    scorer = trained(geo)
    usual = scorer.score(event(20, HOME_IP))
    same_net = scorer.score(event(20, SAME_NET_IP))
    other_net = scorer.score(event(20, OTHER_GB_IP))
    new_country = scorer.score(event(20, SE_IP))
    assert usual < same_net < other_net < new_country
    # By hand: n = 10 events, one value at every level (d = 1), and a population of the
    # same ten events: p(seen value | parent) = 10 / (10 + 1) at every level.
    seen = math.log(10 / 11)
    ua = 4 * seen - seen  # UA: the whole path seen; population over 4 levels, user 10/11
    assert usual == pytest.approx(3 * seen - seen + ua)
    # New address, usual /24: population 10/11 twice; user 10/11 for the /24, unseen
    # mass d / (n + d) = 1/11 at the address level (the population's conditional cancels).
    assert same_net == pytest.approx(2 * seen - seen - math.log(1 / 11) + ua)
    # New country: nothing of the path seen, three unseen masses of 1/11.
    assert new_country == pytest.approx(-3 * math.log(1 / 11) + ua)


def test_new_browser_on_usual_ip_is_riskier_than_usual_browser(geo: GeoLocator) -> None:
    scorer = trained(geo)
    firefox = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
    iphone = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
    )
    usual = scorer.score(event(20, HOME_IP))
    same_os = scorer.score(event(20, HOME_IP, ua=firefox))
    new_device = scorer.score(event(20, HOME_IP, ua=iphone))
    assert usual < same_os < new_device


def test_cold_start_user_gets_the_population_likelihood(geo: GeoLocator) -> None:
    scorer = trained(geo)
    newcomer = event(30, SE_IP, user="u-new")
    attacker, user = scorer.likelihoods(newcomer)
    assert user == attacker
    assert scorer.score(newcomer) == 0.0  # ratio 1 without the user prior
    assert log_ratio([{}, {}, {}], 0, ("SE", "a", "b"), [-1.0, -2.0, -3.0]) == 0.0


def test_user_prior_makes_rarely_seen_accounts_riskier(geo: GeoLocator) -> None:
    scorer = trained(geo, user_prior=True)
    scorer.learn(event(0, SE_IP, user="u-2"))
    # p(u|A) / p(u|L) = (1 / (U + 1)) / ((n_u + 1) / (N + U + 1)), with U = 2 users, N = 11.
    expected = math.log((11 + 3) / (3 * (1 + 1)))
    no_prior = trained(geo)
    no_prior.learn(event(0, SE_IP, user="u-2"))
    probe = event(40, SE_IP, user="u-2")
    assert scorer.score(probe) - no_prior.score(probe) == pytest.approx(expected)


def test_population_backoff_within_a_parent() -> None:
    population = Population((250, 65_536, 256))
    for leaf in ("c", "c", "d"):
        population.add(("GB", "GB/n", f"GB/n/{leaf}"))
    seen = population.log_conditionals(("GB", "GB/n", "GB/n/c"))
    assert seen == pytest.approx([math.log(3 / 4), math.log(3 / 4), math.log(2 / 5)])
    unseen = population.log_conditionals(("GB", "GB/n", "GB/n/e"))
    # Witten-Bell: the parent keeps d / (n + d) = 2/5 for the 256 - 2 addresses not seen.
    assert unseen[2] == pytest.approx(math.log(2 / 5 / 254))
    fresh = population.log_conditionals(("SE", "SE/m", "SE/m/x"))
    assert fresh == pytest.approx([math.log(1 / 4 / 249), math.log(1 / 65_536), math.log(1 / 256)])


def test_failed_logins_and_unlearned_events_leave_the_history_alone(geo: GeoLocator) -> None:
    scorer = trained(geo)
    before = scorer.score(event(20, SE_IP))
    scorer.score_and_learn(event(21, SE_IP, success=False))
    scorer.score_and_learn(event(22, SE_IP), learn=False)
    assert scorer.score(event(23, SE_IP)) == before
    scorer.score_and_learn(event(24, SE_IP))
    assert scorer.score(event(25, SE_IP)) < before


def test_fit_counts_the_population_not_the_users(geo: GeoLocator) -> None:
    scorer = FreemanScorer(geo, user_prior=False).fit(event(n, HOME_IP) for n in range(5))
    assert scorer.fitted_events_ == 5
    assert scorer.histories_ == {}
    assert scorer.ip_population_.total == 5


IPS = (HOME_IP, SAME_NET_IP, OTHER_GB_IP, SE_IP, "175.16.199.1", "2a02:2770::1")


def write_log(path: Path, users: int, seed: int) -> Path:
    """A small log written out of time order (the replay must sort it)."""
    lines = []
    for n in range(120):
        user = f"u-{(n * seed) % users}"
        ip = IPS[(n * n + seed) % len(IPS)] if n % 7 == 0 else IPS[(n * seed) % users % 3]
        lines.append(orjson.dumps(event(n, ip, user=user).model_dump(mode="json")))
    path.write_bytes(b"\n".join(reversed(lines)) + b"\n")
    return path


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("freeman")
    return write_log(root / "train.jsonl", 5, 3), write_log(root / "eval.jsonl", 4, 5)


def test_backtest_is_deterministic_and_in_time_order(
    small_logs: tuple[Path, Path], geo: GeoLocator
) -> None:
    train, evaluation = small_logs
    report = LogReport()
    first = freeman_backtest(evaluation, [train], geo=geo, report=report)
    second = freeman_backtest(evaluation, [train], geo=geo, report=LogReport())
    # The training log's lines are in the report; the evaluation log's are left to its reader.
    assert report.events == len(train.read_bytes().splitlines()) and report.bad == 0
    assert first == second
    lines = evaluation.read_bytes().splitlines()
    ids = [orjson.loads(line)["event_id"] for line in reversed(lines)]
    assert [event_id for event_id, _ in first] == ids  # time order, not file order
    assert all(math.isfinite(score) for _, score in first)
