"""The decision service: a FastAPI app around the one Engine (see ``app.create_app``)."""

from risk_engine.api.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
