"""A JSON response rendered by orjson: the decision path's bodies are built as dicts."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONBody(Response):
    """``application/json`` via orjson (NaN and infinities become null, never invalid JSON)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
