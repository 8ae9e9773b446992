"""Population familiarity: how familiar the event's network is across all users.

A user's first visit to an office's NAT, a carrier's address pool or a VPN
provider's exit is new to that user and old news to the bank: many other
customers have succeeded from there, on many days. Such a network in a country
the user is known in is ``crowded``: the geo family counts it as no new network
(and as familiar as a network seen once) and the velocity family counts its
crowd as no burst. A network nobody here uses stays new; a crowded network
abroad stays new (the country is new); a credential-stuffing network makes no
crowd, since a crowd counts only users established on earlier days, and its
failures count everywhere.

No feature of its own: a model fitted on attacks synthesized from other users'
networks (offline.synthesize) learns a crowd's size as an attack sign, the
opposite of what it is in a real log. The counts come from the store
(``profiles.crowds``), with the burst counts. Reason: ``crowded_network``, a new
network not held against the user, with its crowd's numbers.
"""

from __future__ import annotations

from risk_engine.decision import Reason
from risk_engine.features.common import MIN_HISTORY
from risk_engine.features.observation import Observation
from risk_engine.profiles.model import BurstCounts, Profile

# A crowd: this many other users established on the network, first seen there on
# this many distinct days (an office, a carrier, a VPN exit; not a household).
CROWD_USERS = 5
CROWD_DAYS = 3


def is_crowd(bursts: BurstCounts) -> bool:
    """The network has a crowd of established users (see the module docstring)."""
    return bursts.crowd_users >= CROWD_USERS and bursts.crowd_days >= CROWD_DAYS


def crowded(profile: Profile, bursts: BurstCounts, obs: Observation) -> bool:
    """A crowd's network in a country the user is known in: familiar to this user."""
    return is_crowd(bursts) and bool(obs.country) and obs.country in profile.countries


def _new_here(profile: Profile, obs: Observation) -> bool:
    """Neither this network nor this address was seen in a trusted event."""
    return (
        profile.n_events >= MIN_HISTORY
        and obs.network not in profile.networks
        and obs.ip_key not in profile.ips
    )


def explain(profile: Profile, bursts: BurstCounts, obs: Observation) -> list[tuple[float, Reason]]:
    """Why a new network was not held against the user, weighted as ``reasons`` orders."""
    if not (_new_here(profile, obs) and crowded(profile, bursts, obs)):
        return []
    if bursts.ip_failures or bursts.network_failures:
        # Failed logins there in the hour: no crowd's benefit of the doubt (the policy's
        # ceiling on this reason would cap a credential-stuffing hit at a challenge).
        return []
    detail = (
        f"first time from network {obs.network}, where {bursts.crowd_users} other users"
        f" first succeeded on {bursts.crowd_days} different days (an office, a carrier or"
        " a VPN exit): not held against the user"
    )
    return [(0.2, Reason(code="crowded_network", detail=detail))]
