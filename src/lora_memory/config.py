"""Configuration of a memory: which models, how documents are chunked and cached, how answers are composed.

One pydantic model, saved and restored as JSON (:meth:`MemoryConfig.to_dict` /
:meth:`MemoryConfig.from_dict`) with a version stamp; keys written by a newer
version are dropped with a warning. Invalid values raise pydantic's
``ValidationError`` (a ``ValueError``) naming the field.

Example:
    >>> config = MemoryConfig(top_k=4, max_rank=32)
    >>> MemoryConfig.from_dict(config.to_dict()) == config
    True
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from .generation import GenerationConfig
from .saved_config import SavedConfig

CONFIG_VERSION = 1
DEFAULT_CACHE_SIZE_LIMIT = 4 * 2**30  # 4 GiB: ~2,000 chunk adapters of the embedded model (2 MiB each in fp32)
DEFAULT_INGEST_BATCH_SIZE = 8  # chunks encoded per hypernetwork pass
DEFAULT_TOP_K = 1  # chunks routed to a question; why: docs/collections.md
DEFAULT_COMMIT_INTERVAL_S = 2.0  # a bulk ingest rewrites the manifest at most this often (and when it ends)
DEFAULT_LOCK_TIMEOUT_S = 600.0  # a writer waiting longer than this for another one's lock gives up
DEFAULT_MIN_RELEVANCE = 0.2  # routing relevance below which a question is answered closed-book; docs/reliability.md


class MemoryConfig(SavedConfig):
    """Settings of a :class:`lora_memory.LoRAMemory`."""

    base_model: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct), a local directory or "
                                                    "a Hugging Face id already in the local cache.")
    hypernet: str | None = Field(None, description="Directory of a Doc-to-LoRA checkpoint; None means the shipped "
                                                   "checkpoint when it fits the base model, else a seeded random "
                                                   "initialisation (logged as a warning).")
    dtype: str = Field("auto", description="Base-model dtype: auto (bf16 where the device computes it natively, else fp32), bf16, fp16 or fp32.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    chunk_tokens: int | None = Field(None, ge=8, description="Longest chunk in base-model tokens; None means the "
                                                             "hypernetwork's max_chunk_tokens.")
    ingest_batch_size: int = Field(DEFAULT_INGEST_BATCH_SIZE, ge=1,
                                   description="Chunks encoded per hypernetwork pass; bounds ingest memory.")
    commit_interval_s: float = Field(DEFAULT_COMMIT_INTERVAL_S, ge=0, description=(
        "An ingest of many documents commits the ones it finished (one manifest write) when this many seconds "
        "passed since its last commit, and when it ends or fails; 0 commits every document. Each document is "
        "still all-or-nothing; a killed ingest loses at most this much work, and its adapters are in the cache."))
    cache_dir: Path | None = Field(None, description="Shared adapter cache directory; None means "
                                                     "lora_memory.paths.adapter_cache_dir().")
    cache_size_limit_bytes: int = Field(DEFAULT_CACHE_SIZE_LIMIT, ge=2**20,
                                        description="Size of the shared adapter cache in bytes before the least "
                                                    "recently used entries are evicted.")
    top_k: int | None = Field(DEFAULT_TOP_K, ge=1, description=(
        "Apply only the k chunks whose text best matches the question (BM25); None applies every chunk. "
        "Default 1, measured in docs/collections.md: the hypernetwork's adapters interfere when concatenated "
        "(every chunk of ten documents leaves almost no accuracy), whereas the one routed chunk keeps "
        "single-document accuracy at 100 documents and beats every chunk of a single 4- or 7-chunk document. "
        "Routed chunks are composed by relevance (DocToLoRA.compose), so 2 or 4 cost little (real prose: level "
        "with 1; synthetic facts at 100 documents: 0.58 against 0.67) and gain nothing measured yet. Without a "
        "question (adapter(), export_peft) every chunk is applied."))
    min_relevance: float | None = Field(DEFAULT_MIN_RELEVANCE, ge=0, description=(
        "With top_k routing, a chunk is applied only if its relevance to the question "
        "(lora_memory.routing.BM25Index.relevance: the BM25 score earned by the question's words the chunk "
        "holds, about 1 when every word is rare and present, near 0 when only common words are) reaches this; "
        "when no chunk does, the answer is closed-book (Answer.closed_book, no sources). Default 0.2, measured "
        "in docs/reliability.md (python -m benchmarks.relevance): every eval question about a document in the "
        "collection scored at least 0.27; unrelated questions scored below 0.2 in 90% of cases at 10 documents "
        "and all at 100 (a one-document collection cannot tell them apart). None applies the top_k chunks "
        "whatever they score."))
    max_rank: int | None = Field(None, ge=1, description=(
        "Compress the composed adapter to this rank (SVD); None keeps the full concatenated rank. Off by "
        "default: with top_k=1 the adapter already has the hypernetwork's rank, and compressing two routed "
        "chunks to rank 16 changed accuracy by nothing measurable (docs/collections.md). Set it to bound the "
        "adapter's bytes when top_k is large or None."))
    lock_timeout_s: float | None = Field(DEFAULT_LOCK_TIMEOUT_S, gt=0, description=(
        "Seconds a writer (add, update, delete, check --repair) waits for another process's writer lock on the "
        "collection before failing with CollectionError (a warning says when it starts waiting); None waits "
        "for ever."))
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding defaults.")
    config_version: int = Field(CONFIG_VERSION, description="Version of this schema that wrote the config.")

    model_config = {"extra": "forbid"}
