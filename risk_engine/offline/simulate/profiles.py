"""Simulated people: countries, devices with realistic User-Agents, and users' habits."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from risk_engine.offline.simulate.core import HOUR, hex_id
from risk_engine.offline.simulate.geo import City, CityPool, Network


@dataclass(frozen=True, slots=True)
class CountryInfo:
    """What a user's country implies: languages, currency and phone market."""

    weight: float
    languages: tuple[str, ...]
    currency: str
    per_eur: float
    iphone_share: float
    mac_share: float = 0.2


# Home countries, weighted towards many countries rather than only the US.
COUNTRIES: dict[str, CountryInfo] = {
    "US": CountryInfo(14, ("en-US", "en-US", "es-US"), "USD", 1.1, 0.57, 0.3),
    "GB": CountryInfo(9, ("en-GB",), "GBP", 0.85, 0.5, 0.25),
    "DE": CountryInfo(9, ("de-DE",), "EUR", 1.0, 0.38),
    "FR": CountryInfo(7, ("fr-FR",), "EUR", 1.0, 0.35),
    "ES": CountryInfo(5, ("es-ES",), "EUR", 1.0, 0.22),
    "IT": CountryInfo(5, ("it-IT",), "EUR", 1.0, 0.3),
    "NL": CountryInfo(5, ("nl-NL",), "EUR", 1.0, 0.45, 0.25),
    "BE": CountryInfo(2, ("nl-BE", "fr-BE"), "EUR", 1.0, 0.4),
    "AT": CountryInfo(2, ("de-AT",), "EUR", 1.0, 0.4),
    "IE": CountryInfo(2, ("en-IE",), "EUR", 1.0, 0.5),
    "PT": CountryInfo(2, ("pt-PT",), "EUR", 1.0, 0.3),
    "FI": CountryInfo(2, ("fi-FI",), "EUR", 1.0, 0.35),
    "SE": CountryInfo(4, ("sv-SE",), "SEK", 11.2, 0.55, 0.25),
    "NO": CountryInfo(3, ("nb-NO",), "NOK", 11.7, 0.65, 0.25),
    "DK": CountryInfo(3, ("da-DK",), "DKK", 7.46, 0.6, 0.25),
    "CH": CountryInfo(3, ("de-CH", "fr-CH"), "CHF", 0.94, 0.55, 0.3),
    "PL": CountryInfo(4, ("pl-PL",), "PLN", 4.25, 0.3),
    "CZ": CountryInfo(2, ("cs-CZ",), "CZK", 24.5, 0.3),
    "HU": CountryInfo(1, ("hu-HU",), "HUF", 390.0, 0.3),
    "CA": CountryInfo(5, ("en-CA", "en-CA", "fr-CA"), "CAD", 1.6, 0.55, 0.25),
    "AU": CountryInfo(4, ("en-AU",), "AUD", 1.75, 0.55, 0.25),
    "NZ": CountryInfo(1, ("en-NZ",), "NZD", 1.95, 0.5),
    "JP": CountryInfo(4, ("ja-JP",), "JPY", 165.0, 0.65, 0.2),
    "BR": CountryInfo(4, ("pt-BR",), "BRL", 6.3, 0.15, 0.1),
    "MX": CountryInfo(3, ("es-MX",), "MXN", 21.0, 0.25, 0.1),
    "IN": CountryInfo(3, ("en-IN", "hi-IN"), "INR", 97.0, 0.1, 0.1),
}
# Languages of countries that only appear as attack origins.
OTHER_LANGUAGES: dict[str, str] = {
    "RU": "ru-RU",
    "UA": "uk-UA",
    "CN": "zh-CN",
    "HK": "zh-HK",
    "TW": "zh-TW",
    "KR": "ko-KR",
    "TR": "tr-TR",
    "VN": "vi-VN",
    "ID": "id-ID",
    "TH": "th-TH",
    "RO": "ro-RO",
    "BG": "bg-BG",
    "NG": "en-NG",
    "AR": "es-AR",
    "CO": "es-CO",
    "CL": "es-CL",
    "IL": "he-IL",
    "EG": "ar-EG",
    "ZA": "en-ZA",
    "SG": "en-SG",
    "MY": "ms-MY",
    "PH": "en-PH",
}
ZERO_DECIMAL = frozenset({"JPY", "HUF"})

PLATFORMS = {
    "windows": "Win32",
    "mac": "MacIntel",
    "linux": "Linux x86_64",
    "ios": "iPhone",
    "android": "Linux armv8l",
}
_DESKTOP_SYSTEM = {
    "windows": "Windows NT 10.0; Win64; x64",
    "mac": "Macintosh; Intel Mac OS X 10_15_7",
    "linux": "X11; Linux x86_64",
}
_FIREFOX_SYSTEM = {
    "windows": "Windows NT 10.0; Win64; x64",
    "mac": "Macintosh; Intel Mac OS X 10.15",
    "linux": "X11; Ubuntu; Linux x86_64",
}
# Browser families per desktop OS, with market weights.
FAMILIES = {
    "windows": (("chrome", 0.64), ("edge", 0.21), ("firefox", 0.15)),
    "mac": (("chrome", 0.5), ("safari", 0.4), ("firefox", 0.1)),
    "linux": (("chrome", 0.55), ("firefox", 0.45)),
}
# Major versions in use early 2026, with shares (most people are current).
VERSIONS: dict[str, tuple[tuple[tuple[int, int], float], ...]] = {
    "chrome": (((143, 0), 0.68), ((142, 0), 0.2), ((141, 0), 0.08), ((139, 0), 0.04)),
    "edge": (((143, 0), 0.7), ((142, 0), 0.22), ((141, 0), 0.08)),
    "firefox": (((146, 0), 0.66), ((145, 0), 0.22), ((140, 0), 0.12)),
    "safari": (((26, 2), 0.45), ((26, 1), 0.2), ((18, 6), 0.28), ((17, 6), 0.07)),
}
# Screen sizes (CSS pixels) with rough shares.
SCREENS: dict[str, tuple[tuple[str, float], ...]] = {
    "windows": (
        ("1920x1080", 40),
        ("1536x864", 15),
        ("1366x768", 11),
        ("2560x1440", 12),
        ("1600x900", 6),
        ("1440x900", 5),
        ("1680x1050", 5),
        ("3840x2160", 3),
        ("1280x720", 3),
    ),
    "linux": (("1920x1080", 50), ("2560x1440", 25), ("1366x768", 10), ("3840x2160", 5)),
    "mac": (
        ("1440x900", 22),
        ("1512x982", 20),
        ("1728x1117", 12),
        ("1470x956", 14),
        ("2560x1440", 10),
        ("1920x1080", 10),
        ("1280x800", 6),
        ("1710x1107", 6),
    ),
    "ios": (
        ("390x844", 26),
        ("393x852", 22),
        ("430x932", 14),
        ("402x874", 10),
        ("375x812", 8),
        ("414x896", 8),
        ("440x956", 6),
        ("375x667", 6),
    ),
    "android": (
        ("412x915", 30),
        ("360x800", 18),
        ("384x854", 12),
        ("412x892", 12),
        ("393x873", 10),
        ("360x780", 10),
        ("411x914", 8),
    ),
}
IOS_VERSIONS = (((26, 2), 0.4), ((26, 1), 0.2), ((18, 6), 0.3), ((18, 5), 0.1))
ANDROID_CHROME = (((143, 0), 0.7), ((142, 0), 0.2), ((141, 0), 0.1))


def pick(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    """One label from (label, weight) pairs."""
    labels = [o[0] for o in options]
    return rng.choices(labels, weights=[o[1] for o in options])[0]


def pick_version(
    rng: random.Random, options: tuple[tuple[tuple[int, int], float], ...]
) -> tuple[int, int]:
    """One (major, minor) from weighted version options."""
    return rng.choices([o[0] for o in options], weights=[o[1] for o in options])[0]


def user_agent(family: str, system: str, major: int, minor: int) -> str:
    """A realistic User-Agent header for a browser family, OS and version."""
    if system == "ios":
        # Safari 26 on iOS 26 keeps reporting iOS 18.6 in the User-Agent.
        ios = "18_6" if major >= 26 else f"{major}_{minor}"
        return (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 "
            f"(KHTML, like Gecko) Version/{major}.{minor} Mobile/15E148 Safari/604.1"
        )
    if system == "android":
        return (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{major}.0.0.0 Mobile Safari/537.36"
        )
    if family == "firefox":
        return (
            f"Mozilla/5.0 ({_FIREFOX_SYSTEM[system]}; rv:{major}.0) Gecko/20100101 "
            f"Firefox/{major}.0"
        )
    if family == "safari":
        return (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            f"(KHTML, like Gecko) Version/{major}.{minor} Safari/605.1.15"
        )
    chrome = (
        f"Mozilla/5.0 ({_DESKTOP_SYSTEM[system]}) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36"
    )
    return f"{chrome} Edg/{major}.0.0.0" if family == "edge" else chrome


@dataclass(frozen=True, slots=True)
class Device:
    """A browser on a machine, as the application's client-side script reports it."""

    id: str | None
    kind: str  # desktop | laptop | phone
    family: str  # chrome | edge | firefox | safari
    system: str  # windows | mac | linux | ios | android
    major: int
    minor: int
    timezone: str
    language: str
    screen: str

    @property
    def user_agent(self) -> str:
        """The User-Agent header."""
        return user_agent(self.family, self.system, self.major, self.minor)

    def payload(self) -> dict[str, str]:
        """The contract's `device` object (no id when the device has none)."""
        data = {
            "user_agent": self.user_agent,
            "platform": PLATFORMS[self.system],
            "timezone": self.timezone,
            "language": self.language,
            "screen": self.screen,
        }
        return {"id": self.id, **data} if self.id is not None else data

    def upgraded(self) -> Device:
        """The same device after a browser update (major version + 1)."""
        return replace(self, major=self.major + 1)


def desktop_device(
    rng: random.Random,
    *,
    kind: str,
    zone: str,
    language: str,
    mac_share: float,
    device_id: str | None = "new",
) -> Device:
    """A desktop or laptop browser with market-realistic OS, family and version."""
    roll = rng.random()
    system = "mac" if roll < mac_share else ("linux" if roll < mac_share + 0.04 else "windows")
    family = pick(rng, FAMILIES[system])
    major, minor = pick_version(rng, VERSIONS[family])
    screen = pick(rng, SCREENS[system])
    ident = hex_id(rng) if device_id == "new" else device_id
    return Device(ident, kind, family, system, major, minor, zone, language, screen)


def phone_device(
    rng: random.Random, *, zone: str, language: str, iphone_share: float, prefer: str = ""
) -> Device:
    """A phone browser: Safari on an iPhone or Chrome on Android."""
    system = "ios" if rng.random() < iphone_share else "android"
    if prefer and rng.random() < 0.8:
        system = prefer  # people mostly stay with their phone platform
    if system == "ios":
        major, minor = pick_version(rng, IOS_VERSIONS)
        family = "safari"
    else:
        major, minor = pick_version(rng, ANDROID_CHROME)
        family = "chrome"
    screen = pick(rng, SCREENS[system])
    return Device(hex_id(rng), "phone", family, system, major, minor, zone, language, screen)


@dataclass(slots=True)
class Trip:
    """A plane trip: out, some days at the destination, back; the gaps fit a flight."""

    dest: City
    ips: tuple[str, ...]
    devices: tuple[Device, ...]
    depart_out: int
    arrive_out: int
    depart_back: int
    arrive_back: int
    # Sessions right after landing (people check their account); consumed once.
    landings: list[int] = field(default_factory=list)
    back_labelled: bool = False

    def where(self, ts: int) -> str:
        """'home', 'away' or 'travel' (getting to the airport, flying, landing)."""
        if ts < self.depart_out - 2 * HOUR or ts >= self.arrive_back:
            return "home"
        if self.arrive_out <= ts < self.depart_back - 2 * HOUR:
            return "away"
        return "travel"


@dataclass(slots=True)
class Change:
    """A persistent benign change (browser upgrade, new phone, cleared cookies) on a day."""

    kind: str
    day: int
    label_day: int | None = None


@dataclass(frozen=True, slots=True)
class Exit:
    """One egress of a shared network: where GeoIP puts it and its addresses."""

    city: City
    ips: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Office:
    """A company office: colleagues share its egress and its desktop image."""

    egress: Exit
    family: str
    major: int
    minor: int


@dataclass(slots=True)
class User:
    """One account holder: where they live, what they use and when they are active."""

    index: int
    uid: str
    home: City
    language: str
    currency: str
    per_eur: float
    home_ips: tuple[str, ...]
    home_weights: tuple[float, ...]
    work_ip: str | None
    carrier_nets: tuple[Network, ...]
    primary: Device
    phone: Device | None
    p_phone: float
    p_wifi: float
    rate: float
    weekday_factor: float
    weekend_factor: float
    peaks: tuple[tuple[float, float, float], ...]  # (local hour, spread, weight)
    weekend_shift: float
    amount_mu: float
    amount_sigma: float
    admin: bool
    typo_rate: float
    # Benign scenarios (set by benign.assign_scenarios).
    vpn_exits: tuple[tuple[City, tuple[str, ...]], ...] = ()
    vpn_rate: float = 0.0
    churn_cities: tuple[City, ...] = ()
    trip: Trip | None = None
    change: Change | None = None
    # World habits (set by networks.assign_world).
    carrier_pool: tuple[tuple[City, str], ...] = ()
    vpn_always: bool = False
    office: Office | None = None
    work_device: Device | None = None
    borrow_rate: float = 0.0
    # Running state.
    events: int = 0
    last_ts: int = 0
    odd: tuple[int, ...] = field(default=())

    @property
    def country(self) -> str:
        """ISO code of the home country."""
        return self.home.country

    @property
    def scenario_free(self) -> bool:
        """Whether no benign scenario other than typos was given to this user."""
        return not (self.vpn_exits or self.churn_cities or self.trip or self.change)

    def home_ip(self, rng: random.Random) -> str:
        """The address of one of the home networks (mostly the main one)."""
        if len(self.home_ips) == 1:
            return self.home_ips[0]
        return rng.choices(self.home_ips, weights=self.home_weights)[0]

    def amount(self, rng: random.Random, z: float | None = None) -> float:
        """A transfer amount from the personal log-normal (at quantile z when given)."""
        value = math.exp(self.amount_mu + self.amount_sigma * (rng.gauss(0, 1) if z is None else z))
        return round(value) if self.currency in ZERO_DECIMAL else round(value, 2)

    def local_seconds(self, rng: random.Random, weekend: bool) -> int:
        """Seconds after local midnight for a session, from the personal rhythm."""
        weights = [p[2] for p in self.peaks]
        hour, spread, _ = rng.choices(self.peaks, weights=weights)[0]
        if weekend:
            hour += self.weekend_shift
            spread *= 1.3
        value = (hour + rng.gauss(0, spread)) % 24
        return int(value * 3600)

    def density(self, hour: float) -> float:
        """Relative activity at a local hour (circular mixture of the peaks)."""
        total = 0.0
        for center, spread, weight in self.peaks:
            d = abs(hour - center) % 24
            d = min(d, 24 - d)
            total += weight * math.exp(-0.5 * (d / spread) ** 2) / spread
        return total

    def odd_hours(self) -> tuple[int, ...]:
        """The five local hours at which this user is least active."""
        if not self.odd:
            ranked = sorted(range(24), key=lambda h: (self.density(h + 0.5), h))
            self.odd = tuple(ranked[:5])
        return self.odd


# Daily rhythm building blocks: (centre hour, spread in hours).
_PEAKS = {
    "morning": (7.6, 0.8),
    "lunch": (12.5, 0.7),
    "afternoon": (15.5, 1.2),
    "evening": (19.8, 1.4),
    "late": (22.6, 0.9),
}


def _rhythm(rng: random.Random) -> tuple[tuple[tuple[float, float, float], ...], float]:
    if rng.random() < 0.05:  # night owl
        base = [("late", 1.0), ("evening", 0.5)]
        peaks = [(1.0 + rng.gauss(0, 0.5), 1.0, 0.6)]
    else:
        names = rng.sample(list(_PEAKS), k=rng.choice((2, 2, 3, 3, 4)))
        base = [(n, rng.uniform(0.3, 1.0)) for n in names]
        peaks = []
    for name, weight in base:
        center, spread = _PEAKS[name]
        peaks.append(
            (center + rng.gauss(0, 0.7), spread * rng.uniform(0.7, 1.3), weight),
        )
    return tuple(peaks), rng.uniform(0.5, 2.0)


def make_user(rng: random.Random, pool: CityPool, index: int, countries: list[str]) -> User:
    """Draw one user: home city, networks, devices, rhythm and spending habits."""
    weights = [COUNTRIES[c].weight for c in countries]
    country = rng.choices(countries, weights=weights)[0]
    info = COUNTRIES[country]
    home = pool.city_in(rng, country)
    zone = home.time_zone
    language = rng.choice(info.languages)
    n_home = rng.choices((1, 2, 3), weights=(0.7, 0.22, 0.08))[0]
    home_ips = tuple(home.random_network(rng).host(rng) for _ in range(n_home))
    home_weights = (1.0, *(rng.uniform(0.05, 0.3) for _ in range(n_home - 1)))
    kind = "laptop" if rng.random() < 0.55 else "desktop"
    primary = desktop_device(rng, kind=kind, zone=zone, language=language, mac_share=info.mac_share)
    phone = None
    if rng.random() < 0.75:
        phone = phone_device(rng, zone=zone, language=language, iphone_share=info.iphone_share)
    work_ip = None
    if kind == "laptop" and rng.random() < 0.35:  # some take the laptop to the office
        work_ip = home.random_network(rng).host(rng)
    carriers = tuple(home.random_network(rng) for _ in range(rng.choice((1, 2, 2, 3))))
    rate = min(8.0, max(0.5, math.exp(rng.gauss(math.log(1.2), 0.8))))
    weekend_ratio = rng.uniform(0.4, 1.4)
    weekday_factor = 7 / (5 + 2 * weekend_ratio)
    peaks, shift = _rhythm(rng)
    median = math.exp(rng.gauss(math.log(60.0), 0.8)) * info.per_eur
    return User(
        index=index,
        uid=f"u-{index + 1:06d}",
        home=home,
        language=language,
        currency=info.currency,
        per_eur=info.per_eur,
        home_ips=home_ips,
        home_weights=home_weights,
        work_ip=work_ip,
        carrier_nets=carriers,
        primary=primary,
        phone=phone,
        p_phone=rng.uniform(0.2, 0.8) if phone else 0.0,
        p_wifi=rng.uniform(0.3, 0.8),
        rate=rate,
        weekday_factor=weekday_factor,
        weekend_factor=weekend_ratio * weekday_factor,
        peaks=peaks,
        weekend_shift=shift,
        amount_mu=math.log(median),
        amount_sigma=rng.uniform(0.45, 1.0),
        admin=rng.random() < 0.02,
        typo_rate=0.004,
    )


def language_of(country: str, rng: random.Random) -> str:
    """A plausible browser language for someone in a country."""
    info = COUNTRIES.get(country)
    if info is not None:
        return rng.choice(info.languages)
    return OTHER_LANGUAGES.get(country, "en-US")
