"""The base of every config lora-memory saves as JSON: a round trip that tolerates newer versions."""

from __future__ import annotations

import logging
from typing import Any, Self

from pydantic import BaseModel

logger = logging.getLogger(__name__)


class SavedConfig(BaseModel):
    """A strict pydantic config with ``to_dict``/``from_dict``.

    An unknown key is an error when a config is built in code or from a user's file; only
    :meth:`from_dict` (reading a saved config) drops keys a newer version added, with a warning.
    """

    model_config = {"extra": "forbid"}

    def with_overrides(self, **overrides: Any) -> Self:
        """A validated copy with ``overrides`` applied (``model_copy(update=...)`` would skip validation).

        Raises:
            ValueError: an override names no field of this config (the message names the key), or a value is invalid.
        """
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} field(s): {', '.join(unknown)}")
        return self.model_validate({**self.model_dump(exclude_unset=True), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SavedConfig:
        """Build from :meth:`to_dict` output, dropping (with a warning) keys this version does not know.

        Raises:
            pydantic.ValidationError: a value is invalid (the message names the field).
            ValueError: ``data`` is not a dict (a saved config that is a JSON list, ``null``, a number...).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a saved {cls.__name__} is a JSON object, not {type(data).__name__}")
        unknown = set(data) - set(cls.model_fields)
        if unknown:
            logger.warning("ignoring unknown %s keys: %s", cls.__name__, sorted(unknown))
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})
