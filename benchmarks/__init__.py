"""Benchmarks of lora-memory: internalization vs in-context vs RAG vs context distillation.

Run ``python -m benchmarks.run [--quick] [--smoke] [--out docs]``; it writes
``<out>/benchmarks.md``, ``<out>/benchmarks.json`` and PNG plots in ``<out>/img/``.
Each benchmark is one module with a ``run(ctx) -> Section`` function:

- :mod:`benchmarks.ingest_cost`: internalization time vs a plain prefill and
  per-document context distillation, by document length;
- :mod:`benchmarks.answer_latency`: answering with the adapter vs the document in
  the prompt vs RAG (LlamaIndex + a local MiniLM embedder);
- :mod:`benchmarks.footprint`: adapter bytes vs KV-cache bytes, and each
  variant's peak RSS measured in its own process (:mod:`benchmarks.rss_probe`);
- :mod:`benchmarks.accuracy`: needle-in-a-haystack and fictional-fact QA;
- :mod:`benchmarks.cache_reuse`: re-ingesting a known document vs a first ingest;
- :mod:`benchmarks.serving_load`: ``lora-memory serve`` under 1-16 concurrent clients,
  batched decoding vs the serialized path.
"""
