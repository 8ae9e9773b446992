"""User-Agent parsing, cached: the same few strings recur for every user."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import ua_parser

_MOBILE_OS = frozenset({"iOS", "Android", "iPadOS", "Windows Phone", "BlackBerry OS", "KaiOS"})
_BOTS = ("bot", "spider", "crawl", "curl", "python", "wget", "httpclient", "okhttp", "go-http")


@dataclass(frozen=True, slots=True)
class UAInfo:
    """What a User-Agent string says about the browser and the OS."""

    family: str = ""
    major: str = ""
    os_family: str = ""
    os_major: str = ""
    device_class: str = ""

    @property
    def label(self) -> str:
        """A short human name such as "Chrome 131 on Windows"."""
        if not self.family:
            return "unknown browser"
        name = f"{self.family} {self.major}".strip()
        return f"{name} on {self.os_family}" if self.os_family else name


UNKNOWN_UA = UAInfo()


@lru_cache(maxsize=8192)
def parse_user_agent(user_agent: str | None) -> UAInfo:
    """Parse a User-Agent into family, major version, OS and device class.

    >>> parse_user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    ...                  "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36").label
    'Chrome 131 on Windows'
    """
    if not user_agent:
        return UNKNOWN_UA
    result = ua_parser.parse(user_agent[:1024])
    agent, system = result.user_agent, result.os
    family = agent.family if agent is not None and agent.family != "Other" else ""
    os_family = system.family if system is not None and system.family != "Other" else ""
    lowered = user_agent.lower()
    if any(marker in lowered for marker in _BOTS):
        device_class = "bot"
    elif os_family in _MOBILE_OS or "mobile" in lowered:
        device_class = "mobile"
    elif os_family:
        device_class = "desktop"
    else:
        device_class = "other"
    return UAInfo(
        family=family,
        major=(agent.major or "") if agent is not None else "",
        os_family=os_family,
        os_major=(system.major or "") if system is not None else "",
        device_class=device_class,
    )
