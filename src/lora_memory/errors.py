"""The exceptions lora-memory raises.

Every error a user can trigger with bad input derives from :class:`LoRAMemoryError`,
so ``except LoRAMemoryError`` catches all of them and nothing else.
"""

from __future__ import annotations


class LoRAMemoryError(Exception):
    """Base class of every lora-memory error."""


class ModelNotFoundError(LoRAMemoryError):
    """The base model (or the embedded model package) cannot be found."""


class EmptyDocumentError(LoRAMemoryError, ValueError):
    """A document has no text (empty, whitespace only, or a PDF without a text layer)."""


class UnsupportedDocumentError(LoRAMemoryError, ValueError):
    """A document cannot be read: binary data, undecodable text, a corrupt or encrypted PDF."""


class DocumentNotFoundError(LoRAMemoryError, KeyError):
    """A path or a document id does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class IncompatibleAdapterError(LoRAMemoryError, ValueError):
    """An adapter or hypernetwork does not fit the base model it is used with."""


class CorruptEntryError(LoRAMemoryError):
    """A stored file (cache entry, checkpoint, manifest) fails its integrity check."""


class CorruptManifestError(CorruptEntryError):
    """A collection's ``manifest.json`` is not a valid manifest (not JSON, a key missing, unknown or mistyped).

    Nothing is written or deleted while it stands: a writer refuses to build on it.
    """


class DuplicateDocumentError(LoRAMemoryError, ValueError):
    """Two documents would get the same id, so one would silently replace the other."""


class InvalidNameError(LoRAMemoryError, ValueError):
    """A collection name or a document id is not allowed (a path, control characters, not UTF-8...)."""


class CollectionError(LoRAMemoryError):
    """A collection cannot be opened, locked or written."""


class UnknownCollectionError(CollectionError, KeyError):
    """A collection (or a served model name) does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnsupportedRequestError(LoRAMemoryError, ValueError):
    """A request asks for something the server does not do (``n > 1``, tool calls, ...); ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class SchedulerClosedError(LoRAMemoryError):
    """The decoding scheduler no longer takes requests (it is shutting down)."""


class IngestWorkerError(LoRAMemoryError):
    """A parallel-ingest worker process died, or loaded other models than the memory runs on."""
