"""User-Agent parsing: real strings from real browsers, bots, and the cache."""

from __future__ import annotations

import pytest

from risk_engine.useragent import UNKNOWN_UA, UAInfo, parse_user_agent

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.mark.parametrize(
    ("ua", "family", "major", "os_family", "device_class"),
    [
        (CHROME_WINDOWS, "Chrome", "131", "Windows", "desktop"),
        (SAFARI_IPHONE, "Mobile Safari", "17", "iOS", "mobile"),
        (FIREFOX_LINUX, "Firefox", "128", "Linux", "desktop"),
        (CHROME_ANDROID, "Chrome Mobile", "131", "Android", "mobile"),
        (GOOGLEBOT, "Googlebot", "2", "", "bot"),
        ("curl/8.5.0", "curl", "8", "", "bot"),
        ("python-requests/2.32.3", "Python Requests", "2", "", "bot"),
    ],
)
def test_real_user_agents(
    ua: str, family: str, major: str, os_family: str, device_class: str
) -> None:
    info = parse_user_agent(ua)
    assert info.family == family
    assert info.major == major
    assert info.os_family == os_family
    assert info.device_class == device_class


def test_labels_are_readable() -> None:
    assert parse_user_agent(CHROME_WINDOWS).label == "Chrome 131 on Windows"
    assert parse_user_agent(SAFARI_IPHONE).label == "Mobile Safari 17 on iOS"
    assert parse_user_agent(GOOGLEBOT).label == "Googlebot 2"
    assert UNKNOWN_UA.label == "unknown browser"


@pytest.mark.parametrize("ua", [None, ""])
def test_missing_user_agent_is_unknown(ua: str | None) -> None:
    assert parse_user_agent(ua) == UNKNOWN_UA
    assert parse_user_agent(ua) == UAInfo()


def test_unrecognised_user_agent_has_no_family() -> None:
    info = parse_user_agent("definitely not a browser")
    assert info.family == "" and info.os_family == ""
    assert info.device_class == "other"


def test_very_long_user_agent_is_parsed_from_its_start() -> None:
    info = parse_user_agent(CHROME_WINDOWS + " x" * 5000)
    assert info.family == "Chrome" and info.os_family == "Windows"


def test_cache_returns_the_same_object_without_parsing_again() -> None:
    ua = FIREFOX_LINUX + " cache-probe"
    first = parse_user_agent(ua)
    before = parse_user_agent.cache_info()
    second = parse_user_agent(ua)
    after = parse_user_agent.cache_info()
    assert second is first
    assert after.hits == before.hits + 1
    assert after.misses == before.misses
