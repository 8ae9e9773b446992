"""The baseline: Freeman et al., "Who Are You? A Statistical Approach to Measuring User
Authenticity" (NDSS 2016), replayed over the same stream as the engine.

The score of an event ``x`` of user ``u`` is the likelihood ratio of the paper,

    S(u, x) = p(u | A) / p(u | L) * prod_k p(x_k | A) / p(x_k | u, L)

over two feature families ``k``, each a hierarchy from coarse to fine:

    IP:         country -> network (IPv4 /24, IPv6 /48) -> address
    User-Agent: device type -> OS family -> browser (family + major) -> UA string

and is returned as its natural logarithm (higher = riskier). As in the paper:

- ``p(x | A)``, the attacker, is the population's distribution (attackers are modelled
  as logging in from where users in general do);
- ``p(x | u, L)``, the user, is the user's own history smoothed by backing off: a
  value the user never showed gets the Witten-Bell unseen mass ``d / (n + d)`` of its
  level times the user's probability of the parent (the network for an address, the
  country for a network) times the population's probability of the value within that
  parent. A user with no history gets the population's distribution (ratio 1);
- ``p(u | A) / p(u | L)``: attackers pick accounts uniformly, users log in at their own
  rate, so rarely active accounts are a little riskier (``user_prior``).

The population counts are fitted on a TRAINING log (``fit``) and then keep counting
online, score-then-learn, during the replay (``online_population``; off = frozen).
Per-user histories start empty in the replayed log, as the engine's profiles do:
a training log from another population shares user ids, not people. Failed logins
are never learned, nor are events whose step-up outcome is "failed" (in the paper's
evaluation the injected attacks never enter a history either). The paper's
IP-reputation terms are left out (they need labelled attack traffic to estimate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path

from risk_engine.errors import GeoIPError
from risk_engine.events import Event
from risk_engine.geo import GeoLocator, IPAddress, network_prefix
from risk_engine.offline.logs import LogReport, events_in_time_order, merged_events
from risk_engine.offline.remote import LogPath
from risk_engine.offline.replayer import load_outcomes
from risk_engine.useragent import parse_user_agent

KeyPath = tuple[str, ...]

# Notional number of values a parent can hold, per level (coarse -> fine): the share of
# the population's unseen mass that one never-seen value gets. Only values the
# population never showed depend on them.
IP_UNIVERSE = (250, 65_536, 256)
UA_UNIVERSE = (8, 64, 512, 4_096)
_SEP = "\x1f"

# Events between two progress updates.
TICK_EVERY = 2000


def ip_path(ip: IPAddress, geo: GeoLocator) -> KeyPath:
    """The address's hierarchy: (country, country/network, country/network/address)."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    try:
        country = geo.lookup(ip).country or "??"
    except GeoIPError:
        country = "??"
    network = network_prefix(ip)
    return (country, f"{country}{_SEP}{network}", f"{country}{_SEP}{network}{_SEP}{ip}")


def ua_path(user_agent: str | None) -> KeyPath:
    """The User-Agent's hierarchy: device type, OS family, browser family+major, string."""
    info = parse_user_agent(user_agent)
    device = info.device_class or "other"
    os_key = f"{device}{_SEP}{info.os_family or '?'}"
    browser = f"{os_key}{_SEP}{f'{info.family} {info.major}'.strip() or '?'}"
    return (device, os_key, browser, f"{browser}{_SEP}{(user_agent or '')[:1024]}")


@dataclass
class Population:
    """Counts of every level of one feature family over all users: the global p(x)."""

    universe: tuple[int, ...]
    counts: dict[str, int] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)
    total: int = 0
    roots: int = 0

    def add(self, path: KeyPath) -> None:
        for level, key in enumerate(path):
            seen = self.counts.get(key, 0)
            if seen == 0:
                if level == 0:
                    self.roots += 1
                else:
                    parent = path[level - 1]
                    self.children[parent] = self.children.get(parent, 0) + 1
            self.counts[key] = seen + 1
        self.total += 1

    def log_conditionals(self, path: KeyPath) -> list[float]:
        """log p(x_j | x_{j-1}) per level, each Witten-Bell smoothed within its parent."""
        out: list[float] = []
        for level, key in enumerate(path):
            if level == 0:
                parent_n, parent_d = self.total, self.roots
            else:
                parent_n = self.counts.get(path[level - 1], 0)
                parent_d = self.children.get(path[level - 1], 0)
            size = self.universe[level]
            seen = self.counts.get(key, 0)
            if parent_n == 0:
                prob = 1.0 / size
            elif seen > 0:
                prob = seen / (parent_n + parent_d)
            else:
                prob = parent_d / (parent_n + parent_d) / max(size - parent_d, 1)
            out.append(math.log(prob))
        return out


@dataclass
class History:
    """One user's counts per level of both families; ``n`` events learned."""

    n: int = 0
    ip: list[dict[str, int]] = field(default_factory=lambda: [{} for _ in IP_UNIVERSE])
    ua: list[dict[str, int]] = field(default_factory=lambda: [{} for _ in UA_UNIVERSE])


def _add(levels: list[dict[str, int]], path: KeyPath) -> None:
    for counter, key in zip(levels, path, strict=True):
        counter[key] = counter.get(key, 0) + 1


def log_ratio(
    levels: list[dict[str, int]], n: int, path: KeyPath, population: list[float]
) -> float:
    """log p(x | A) - log p(x | u, L) for one family, with hierarchical backoff.

    ``population`` holds the population's log conditionals of ``path``. Below the
    deepest level the user has seen, both sides share those conditionals, so they
    cancel: what remains is the population's probability of the seen prefix against
    the user's, and the user's unseen mass ``d / (n + d)`` for each level below it.
    """
    if n == 0:
        return 0.0  # no history: the user is the population
    deepest = -1
    for level, key in enumerate(path):
        if key not in levels[level]:
            break
        deepest = level
    ratio = sum(population[: deepest + 1])
    if deepest >= 0:
        counter = levels[deepest]
        ratio -= math.log(counter[path[deepest]] / (n + len(counter)))
    for level in range(deepest + 1, len(path)):
        distinct = len(levels[level])
        ratio -= math.log(distinct / (n + distinct))
    return ratio


class FreemanScorer:
    """The Freeman et al. likelihood-ratio scorer, score-then-learn (see the module doc)."""

    def __init__(
        self,
        geo: GeoLocator | None = None,
        *,
        user_prior: bool = True,
        online_population: bool = True,
    ) -> None:
        self.geo = geo or GeoLocator()
        self.user_prior = user_prior
        self.online_population = online_population
        self.ip_population_ = Population(IP_UNIVERSE)
        self.ua_population_ = Population(UA_UNIVERSE)
        self.histories_: dict[str, History] = {}
        self.stream_events_ = 0
        self.fitted_events_ = 0
        self.fitted_window_: tuple[float, float] | None = None

    def _paths(self, event: Event) -> tuple[KeyPath, KeyPath]:
        agent = event.device.user_agent if event.device is not None else None
        return ip_path(event.ip, self.geo), ua_path(agent)

    def fit(self, events: Iterable[Event]) -> FreemanScorer:
        """Count the population's IPs and User-Agents in a training log (no user histories)."""
        first, last = math.inf, -math.inf
        for event in events:
            if not event.success:
                continue  # a failed credential check says nothing of how users log in
            ip, ua = self._paths(event)
            self.ip_population_.add(ip)
            self.ua_population_.add(ua)
            self.fitted_events_ += 1
            first, last = min(first, event.epoch), max(last, event.epoch)
        if self.fitted_events_:
            self.fitted_window_ = (first, last)
        return self

    def likelihoods(self, event: Event) -> tuple[float, float]:
        """(log p(x | A), log p(x | u, L)) over both families, under the current state."""
        ip, ua = self._paths(event)
        history = self.histories_.get(event.user_id) or History()
        attacker = user = 0.0
        for levels, path, population in (
            (history.ip, ip, self.ip_population_),
            (history.ua, ua, self.ua_population_),
        ):
            conditionals = population.log_conditionals(path)
            attacker += sum(conditionals)
            user += sum(conditionals) - log_ratio(levels, history.n, path, conditionals)
        return attacker, user

    def score(self, event: Event) -> float:
        """The log likelihood ratio of the event under the current state (no learning)."""
        return self._score(event, *self._paths(event))

    def _score(self, event: Event, ip: KeyPath, ua: KeyPath) -> float:
        history = self.histories_.get(event.user_id) or History()
        value = log_ratio(history.ip, history.n, ip, self.ip_population_.log_conditionals(ip))
        value += log_ratio(history.ua, history.n, ua, self.ua_population_.log_conditionals(ua))
        if self.user_prior:
            # p(u|A) = 1/(U+1); p(u|L) = (n_u+1)/(N+U+1): add-one over the users seen so far.
            users = len(self.histories_) + 1
            value += math.log((self.stream_events_ + users) / (users * (history.n + 1)))
        return value

    def learn(self, event: Event, ip: KeyPath | None = None, ua: KeyPath | None = None) -> None:
        """Fold a successful event into its user's history (and the population, if online)."""
        if not event.success:
            return
        if ip is None or ua is None:
            ip, ua = self._paths(event)
        history = self.histories_.setdefault(event.user_id, History())
        _add(history.ip, ip)
        _add(history.ua, ua)
        history.n += 1
        self.stream_events_ += 1
        if self.online_population:
            self.ip_population_.add(ip)
            self.ua_population_.add(ua)

    def score_and_learn(self, event: Event, *, learn: bool = True) -> float:
        """Score from the state built by earlier events, then learn the event."""
        ip, ua = self._paths(event)
        value = self._score(event, ip, ua)
        if learn:
            self.learn(event, ip, ua)
        return value


def freeman_backtest(
    events_path: LogPath,
    train_paths: list[Path],
    *,
    outcomes_path: Path | None = None,
    geo: GeoLocator | None = None,
    user_prior: bool = True,
    online_population: bool = True,
    report: LogReport,
    on_tick: Callable[[int], None] | None = None,
) -> list[tuple[str, float]]:
    """(event_id, score) for every valid event of ``events_path``, in time order.

    The population is fitted on ``train_paths`` first (may be empty: then it is
    counted online only). An event whose step-up outcome is "failed" is not learned,
    as the paper's injected attacks never enter the histories they are scored against.
    ``report`` gets the bad lines of ``train_paths`` and of the outcomes; those of
    ``events_path`` are left to whoever reads it for the engine (the same lines).
    ``on_tick`` hears how many events were scored, now and then (a progress bar).
    """
    reading = report
    scorer = FreemanScorer(geo, user_prior=user_prior, online_population=online_population)
    if train_paths:
        scorer.fit(merged_events(train_paths, reading))
    outcomes = load_outcomes(outcomes_path, reading) if outcomes_path else {}
    scores: list[tuple[str, float]] = []
    for event in events_in_time_order(events_path, LogReport()):
        learn = outcomes.get(event.event_id, True)
        scores.append((event.event_id, scorer.score_and_learn(event, learn=learn)))
        if on_tick is not None and len(scores) % TICK_EVERY == 0:
            on_tick(len(scores))
    return scores
