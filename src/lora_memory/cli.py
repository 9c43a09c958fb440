"""The ``lora-memory`` command: parse arguments, build a config, call the library.

Answers go to stdout (``ask`` prints only the answer, or one JSON object with
``--json``); progress bars and logs go to stderr (progress is logged when stderr is
not a terminal); an error is one line on stderr
and a non-zero exit status (1, or 130 when interrupted).

Subcommands live in :data:`COMMANDS` (name -> ``(add_arguments, handler)``); a
module adds its own with one line each, e.g.
``COMMANDS["train"] = (add_train_arguments, train)``. A handler receives the
parsed namespace (with the global options) and returns the exit status.

A collection is named with ``-c NAME`` (a name, never a path: it lives under the
home's ``collections/``); a collection elsewhere is opened only through an explicit
``--directory DIR``.

Example:
    $ lora-memory ingest notes/ -c work --glob '**/*.md'
    $ lora-memory ingest corpus.jsonl -c wiki --workers 4
    $ lora-memory ingest corpus.jsonl -c wiki --ray auto --workers 16 --gpus-per-actor 1
    $ lora-memory ask "When is the launch?" -c work --json
    $ lora-memory check -c work --repair
    $ lora-memory cache prune
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from .cache import AdapterCache
from .check import check_collection
from .collection import Collection, chunk_keys_in_use, list_collections
from .config import MemoryConfig
from .corpus import JSONL_SUFFIX, count_lines, iter_jsonl
from .errors import CorruptManifestError, LoRAMemoryError
from .generation import GenerationConfig
from .memory import DEFAULT_COLLECTION, LoRAMemory
from .parallel import DEFAULT_WORKER_THREADS
from .paths import HOME_ENV, collection_dir, collections_dir
from .ray_ingest import RayOptions
from .serve_command import add_serve_arguments, run_serve
from .training.cli import add_eval_arguments, add_train_arguments, run_eval, run_train

logger = logging.getLogger(__name__)

AddArguments = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------ shared helpers
def memory_config(args: argparse.Namespace) -> MemoryConfig:
    """The :class:`MemoryConfig` the global options (and a subcommand's ``--top-k``, ``--max-rank``,
    ``--max-new-tokens``, where it has them) describe.
    """
    generation = GenerationConfig()
    if getattr(args, "max_new_tokens", None) is not None:
        generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    given = {key: value for key in ("top_k", "max_rank") if (value := getattr(args, key, None)) is not None}
    return MemoryConfig(base_model=args.base_model, hypernet=args.hypernet, dtype=args.dtype, device=args.device,
                        generation=generation, **given)  # unset options keep MemoryConfig's defaults


def open_memory(args: argparse.Namespace) -> LoRAMemory:
    """The collection ``-c NAME`` (or ``--directory DIR``) with the models the global options name."""
    if args.directory is not None:
        return LoRAMemory.open(args.directory.name, directory=args.directory, config=memory_config(args))
    return LoRAMemory.open(args.collection, config=memory_config(args))


def existing_collection(args: argparse.Namespace) -> Collection:
    """The existing collection ``-c NAME`` (or ``--directory DIR``), without loading any model."""
    return Collection.existing(args.directory if args.directory is not None else collection_dir(args.collection))


def _add_collection(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """``-c NAME`` (or a positional ``NAME``) or ``--directory DIR``, one of them."""
    where = parser.add_mutually_exclusive_group()
    if positional:
        where.add_argument("collection", nargs="?", default=DEFAULT_COLLECTION, metavar="NAME",
                           help=f"collection name (default: {DEFAULT_COLLECTION})")
    else:
        where.add_argument("-c", "--collection", default=DEFAULT_COLLECTION, metavar="NAME",
                           help=f"collection name (default: {DEFAULT_COLLECTION})")
    where.add_argument("--directory", type=Path, metavar="DIR",
                       help="a collection directory outside the home (instead of a name)")


# ------------------------------------------------------------------ subcommands
def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="files or directories; a .jsonl file is a corpus: one {\"id\", \"text\", \"metadata\"} "
                             "object per line")
    _add_collection(parser)
    parser.add_argument("--glob", default="**/*", help="files to read inside directories (default: **/*)")
    parser.add_argument("--id", dest="doc_id", help="document id (only with a single file)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="encode in N worker processes (with --ray: N Ray actors), each with --threads torch "
                             "threads (default 1); this process writes and commits (default: 1, encode here)")
    parser.add_argument("--ray", metavar="ADDRESS", help="encode on Ray: 'local' starts a Ray on this machine (its "
                        "CPUs), any other address is passed to ray.init (e.g. auto, ray://head:10001); "
                        "needs pip install \"lora-memory[ray]\"")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G",
                        help="with --ray: GPUs each actor reserves (default: 0)")


def ingest(args: argparse.Namespace) -> int:
    """Internalize files or directories into a collection; prints the document ids.

    A ``.jsonl`` file given by name is a corpus, one document per line (:mod:`lora_memory.corpus`).
    """
    if args.gpus_per_actor and not args.ray:
        raise ValueError("--gpus-per-actor needs --ray")
    memory = open_memory(args)
    ray = RayOptions(address=args.ray, num_gpus_per_actor=args.gpus_per_actor) if args.ray else None
    parallel = {"workers": args.workers, "worker_threads": args.threads or DEFAULT_WORKER_THREADS, "ray": ray}
    corpora = [p for p in args.paths if p.suffix == JSONL_SUFFIX and p.is_file()]
    if corpora and args.doc_id:
        raise ValueError("--id names one document; a .jsonl corpus holds many")
    others = [p for p in args.paths if p not in corpora]
    if others:
        for doc_id in memory.add(others, doc_id=args.doc_id, glob=args.glob, progress=True, **parallel):
            print(doc_id)
    for path in corpora:
        for doc_id in memory.add_documents(iter_jsonl(path), progress=True, total=count_lines(path), **parallel):
            print(doc_id)
    return 0


def _ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    _add_collection(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    output.add_argument("--json", action="store_true", help="print one JSON object: answer, sources, timings")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens")
    parser.add_argument("--task", help="a task description (Text-to-LoRA adapter added to the documents')")
    parser.add_argument("--top-k", type=int, help="apply only the k chunks that best match the question")
    parser.add_argument("--max-rank", type=int, help="compress the applied adapter to this rank")


def ask(args: argparse.Namespace) -> int:
    """Answer a question from a collection's memory (the documents are not in the prompt)."""
    memory = open_memory(args)
    if args.stream:
        pieces, _ = memory.ask_stream(args.question, task=args.task)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    answer = memory.ask(args.question, task=args.task)
    if args.json:
        out = answer.model_dump(mode="json")
        out["answer"] = out.pop("text")
        print(json.dumps(out))
    else:
        print(answer.text)
    return 0


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def list_(args: argparse.Namespace) -> int:
    """List the collections and how many documents each holds (a collection with a corrupt manifest is marked)."""
    rows = []
    for name in list_collections(collections_dir()):
        try:
            rows.append({"name": name, "documents": len(Collection.existing(collections_dir() / name).documents)})
        except CorruptManifestError as exc:
            logger.warning("%s", exc)
            rows.append({"name": name, "documents": None, "error": "corrupt manifest"})
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['name']}\t" + (f"{row['documents']} documents" if row["documents"] is not None
                                         else "corrupt manifest (see `lora-memory show` for the error)"))
    return 0


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    _add_collection(parser, positional=True)
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def show(args: argparse.Namespace) -> int:
    """List a collection's documents: id, chunks, tokens, source."""
    infos = [record.info() for record in existing_collection(args).documents.values()]
    if args.json:
        print(json.dumps([info.model_dump(mode="json") for info in infos]))
    else:
        for info in infos:
            print(f"{info.doc_id}\t{info.n_chunks} chunks\t{info.n_tokens} tokens\t{info.source or '-'}")
    return 0


def _rm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("doc_id", metavar="DOC_ID")
    _add_collection(parser)


def rm(args: argparse.Namespace) -> int:
    """Remove a document from a collection."""
    existing_collection(args).remove(args.doc_id)
    return 0


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    _add_collection(parser)
    parser.add_argument("--repair", action="store_true", help="rebuild damaged documents (from the adapter cache, "
                        "else from their source files); loads the models")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def check(args: argparse.Namespace) -> int:
    """Verify every chunk file of a collection; exit 1 while a document is damaged (--repair rebuilds them)."""
    report = open_memory(args).check(repair=True) if args.repair else check_collection(existing_collection(args))
    if args.json:
        print(json.dumps({**report.model_dump(mode="json"), "ok": report.ok}))
    else:
        print(f"{report.collection}: {report.documents} documents, {report.chunk_files} chunk files, "
              f"{len(report.damaged)} damaged")
        for doc in report.damaged:
            status = f"repaired {doc.repaired}" if doc.repaired else "damaged"
            print(f"{doc.doc_id}\t{status}\t" + "; ".join(doc.chunks.values()))
    return 0 if report.ok else EXIT_ERROR


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_collection(parser)
    parser.add_argument("out", type=Path, metavar="OUT", help="the PEFT directory to write")
    parser.add_argument("--max-rank", type=int, help="compress the exported adapter to this rank")
    parser.add_argument("--for", dest="target", choices=["peft", "vllm"], default="peft",
                        help="vllm: rank zero-padded to one vLLM serves, scaling folded in (default: peft)")


def export(args: argparse.Namespace) -> int:
    """Export a collection's composed adapter as a PEFT LoRA directory (rank at most vLLM's 512); prints its path."""
    memory = open_memory(args)
    if args.target == "vllm":
        from .vllm_export import export_memory_vllm

        print(export_memory_vllm(memory, args.out))
        return 0
    print(memory.export_peft(args.out))
    return 0


def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["clear", "prune"], help="clear: remove every entry; prune: remove the "
                        "entries no collection of the home uses (those of removed or updated documents)")


def cache(args: argparse.Namespace) -> int:
    """Clear or prune the shared adapter cache, which keeps every chunk's adapter and text; collections lose nothing."""
    adapters = AdapterCache()
    try:
        removed = adapters.clear() if args.action == "clear" else adapters.prune(chunk_keys_in_use(collections_dir()))
        print(f"removed {removed} entries; {len(adapters)} left ({adapters.volume() / 2**20:.1f} MiB)")
    finally:
        adapters.close()  # checkpoints SQLite's log: removed text leaves the files now
    return 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def demo(args: argparse.Namespace) -> int:
    """Internalize a short document on the embedded model and answer questions about it."""
    del args
    from .demo import main as demo_main

    return demo_main([]) or 0


COMMANDS: dict[str, tuple[AddArguments, Handler]] = {
    "ingest": (_ingest_arguments, ingest),
    "ask": (_ask_arguments, ask),
    "list": (_list_arguments, list_),
    "show": (_show_arguments, show),
    "rm": (_rm_arguments, rm),
    "check": (_check_arguments, check),
    "export": (_export_arguments, export),
    "cache": (_cache_arguments, cache),
    "demo": (_no_arguments, demo),
    "train": (add_train_arguments, run_train),
    "eval": (add_eval_arguments, run_eval),
    "serve": (add_serve_arguments, run_serve),
}


# ------------------------------------------------------------------ entry point
def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global options; on subcommands (``suppress``) they only override what was given before the subcommand."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--home", default=default(None), help=f"where all state lives (sets ${HOME_ENV})")
    parser.add_argument("--base-model", default=default("embedded"),
                        help="'embedded', a model directory or a cached Hugging Face id (default: embedded)")
    parser.add_argument("--hypernet", default=default(None), help="Doc-to-LoRA checkpoint directory "
                        "(default: the shipped one)")
    parser.add_argument("--dtype", default=default("auto"), choices=["auto", "bf16", "fp16", "fp32"],
                        help="base-model dtype (default: auto = bf16 where the device computes it natively, else fp32)")
    parser.add_argument("--device", default=default("auto"), help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--threads", type=int, default=default(None),
                        help="torch CPU threads (default: torch's, one per core); 1 when sharing the machine")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="log progress details")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="lora-memory", description="Documents internalized as LoRA adapters: "
                                     "ingest them once, then ask questions without them in the prompt.")
    _add_global_options(parser, suppress=False)
    shared = argparse.ArgumentParser(add_help=False)
    _add_global_options(shared, suppress=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, handler) in COMMANDS.items():
        doc = (handler.__doc__ or "").strip()
        sub = subparsers.add_parser(name, parents=[shared], help=doc.split("\n")[0], description=doc)
        add_arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not sys.stderr.isatty():  # no progress bar there: an ingest logs its progress instead
        logging.getLogger("lora_memory.ingest").setLevel(logging.INFO)
    if args.home:
        os.environ[HOME_ENV] = str(Path(args.home).expanduser())
    if args.threads is not None:
        if args.threads < 1:
            print("lora-memory: error: --threads must be at least 1", file=sys.stderr)
            return EXIT_ERROR
        import torch  # only here: most commands import it later, through the library

        torch.set_num_threads(args.threads)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("lora-memory: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (LoRAMemoryError, ValueError, OSError, NotImplementedError) as exc:
        print(f"lora-memory: error: {_one_line(exc)}", file=sys.stderr)
        logger.debug("details", exc_info=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
