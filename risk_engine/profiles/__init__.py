"""Behavioral profiles and the stores that keep them."""

from risk_engine.profiles.factory import open_store
from risk_engine.profiles.memory import MemoryStore
from risk_engine.profiles.model import BurstCounts, DeviceRecord, Place, Profile, SessionRecord
from risk_engine.profiles.redis import RedisStore
from risk_engine.profiles.redis_cluster import RedisClusterStore
from risk_engine.profiles.sqlite import SQLiteStore
from risk_engine.profiles.store import BurstNote, ProfileStore

__all__ = [
    "BurstCounts",
    "BurstNote",
    "DeviceRecord",
    "MemoryStore",
    "Place",
    "Profile",
    "ProfileStore",
    "RedisClusterStore",
    "RedisStore",
    "SQLiteStore",
    "SessionRecord",
    "open_store",
]
