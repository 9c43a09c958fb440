"""The base of every config lora-memory saves as JSON: a round trip that tolerates newer versions."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

logger = logging.getLogger(__name__)


class SavedConfig(BaseModel):
    """A pydantic config with ``to_dict``/``from_dict``; keys a newer version added are dropped with a warning."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SavedConfig:
        """Build from :meth:`to_dict` output, dropping (with a warning) keys this version does not know.

        Raises:
            pydantic.ValidationError: a value is invalid (the message names the field).
        """
        unknown = set(data) - set(cls.model_fields)
        if unknown:
            logger.warning("ignoring unknown %s keys: %s", cls.__name__, sorted(unknown))
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})
