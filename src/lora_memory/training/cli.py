"""``lora-memory train`` and ``lora-memory eval``: argument parsing only; the work is in the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..base import load_base_model
from ..hypernet import DocToLoRA, HypernetConfig


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="Training config JSON (see configs/).")
    parser.add_argument("--max-steps", type=int, default=None, help="Stop after this many more steps (resumable).")
    parser.add_argument("--out-dir", default=None, help="Override the config's out_dir.")


def run_train(args: argparse.Namespace) -> int:
    """Train a Doc-to-LoRA hypernetwork from a JSON config; resumes from the run's last checkpoint."""
    from .d2l.config import TrainConfig
    from .d2l.trainer import FINAL_DIR, Trainer

    config = TrainConfig.from_file(args.config)
    if args.out_dir:
        config = config.model_copy(update={"out_dir": args.out_dir})
    trainer = Trainer(config)
    trainer.run(max_steps=args.max_steps)
    done = trainer.step >= config.total_steps
    where = Path(config.out_dir) / (FINAL_DIR if done else "checkpoint")
    print(f"{'finished' if done else 'paused'} at step {trainer.step}/{config.total_steps}: {where}", file=sys.stderr)
    return 0


def write_section(path: Path, name: str, text: str) -> None:
    """Write ``text`` into ``path`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` markers.

    An existing section of that name is replaced and the rest of the file kept, so the ladder and the
    prose evaluation can share docs/eval.md; without the markers the section is appended.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--capacity", action="store_true",
                        help="Also check that a free LoRA on the same targets stores a document (ladder rung 1); "
                             "with --prose, run only that rung, on held-out articles.")
    parser.add_argument("--capacity-shape", type=json.loads, default=None, metavar="JSON",
                        help='With --capacity: HypernetConfig overrides for the free LoRA\'s shape, e.g. '
                             '\'{"rank": 32, "target_layers": null}\' (default: the hypernetwork\'s own).')
    parser.add_argument("--density", action="store_true",
                        help="Run the chunk-density evaluation (dense documents at several chunk lengths) instead "
                             "of the needle and facts ladder.")
    parser.add_argument("--prose", action="store_true",
                        help="Run the real-prose evaluation (held-out Wikipedia summaries: hand-written and rule-made "
                             "questions; internalized vs in-context vs RAG vs closed-book) instead of the ladder.")
    parser.add_argument("--validation", action="store_true",
                        help="With --prose: the written questions' validation part only (checkpoint selection; the "
                             "held-out test questions are not asked).")
    parser.add_argument("--sentence-answers", action="store_true",
                        help="With --prose --validation: teacher-forced losses on the article's sentence through the "
                             "answer (what a hypernetwork trained with answers \"sentence\" replies), and a "
                             "48-token reply budget.")
    parser.add_argument("--composition", action="store_true",
                        help="With --prose --validation: where composing chunk adapters loses accuracy, for a reader "
                             "with an associative companion (each part composed from top-1, 2 or 4 chunks; the "
                             "companion solved jointly; each chunk's memory cut to --ranks).")
    parser.add_argument("--companion-reads", action="store_true",
                        help="With --prose --validation: read the composed companion memories in other ways at query "
                             "time (a top-m read, a gate per chunk memory) against the linear read.")
    parser.add_argument("--read-top", type=int, nargs="*", default=[2], metavar="M",
                        help="With --companion-reads: the m of each top-m read (default: 2).")
    parser.add_argument("--two-chunk", action="store_true",
                        help="With --prose: questions that need two chunks (two held-out articles' questions asked "
                             "as one prompt) instead of the prose table.")
    parser.add_argument("--ranks", type=int, nargs="*", default=[], metavar="R",
                        help="With --composition: also cut each chunk's companion memory to these ranks.")
    parser.add_argument("--replies", type=Path, default=None, help="With --prose: write every reply to this JSON file.")
    parser.add_argument("--seed", type=int, default=None,
                        help="The ladder's document seed (default: EvalConfig's, which the tables in docs/ use); "
                             "another seed draws another sample of held-out needles and fact sheets.")
    parser.add_argument("--quick", action="store_true", help="Fewer, shorter documents (a smoke run).")
    parser.add_argument("--output", type=Path, default=None, help="Also write the markdown table here.")


def section_name(args: argparse.Namespace) -> str:
    """The block of ``--output`` that this evaluation's table replaces: one per kind of table."""
    if args.prose:
        if args.capacity:
            return "prose-capacity"
        if args.validation:
            if args.companion_reads:
                return "prose-companion-reads"
            return "prose-composition" if args.composition else "prose-validation"
        return "prose-two-chunk" if args.two_chunk else "prose"
    return "density" if args.density else "ladder"


def run_eval(args: argparse.Namespace) -> int:
    """Held-out evaluation of a hypernetwork (--hypernet, default the shipped one): needle, facts, collapse."""
    from ..checkpoints import default_hypernet_dir
    from ..evaluation.d2l import EvalConfig, density_markdown, evaluate_capacity, evaluate_density, evaluate_hypernet

    base = load_base_model(args.base_model, dtype=args.dtype, device=args.device)
    path = args.hypernet or default_hypernet_dir()
    hypernet = DocToLoRA.from_pretrained(path, base=base, device=base.device)
    shape = HypernetConfig.model_validate({**hypernet.config.model_dump(), **(args.capacity_shape or {})})
    if args.prose and args.capacity:
        from ..evaluation.prose import capacity_markdown, evaluate_prose_capacity

        caps = {variant: evaluate_prose_capacity(base, shape, articles=3 if args.quick else 20, variant=variant)
                for variant in ("rules", "everything", "written")}
        table = capacity_markdown(caps, shape)
    elif args.prose:
        from ..evaluation.prose import evaluate_prose, handwritten_questions

        name = str(path) if args.hypernet else "the shipped checkpoint"
        if args.validation and args.companion_reads:
            from ..evaluation.companion_reads import companion_reads_markdown, evaluate_companion_reads

            table = companion_reads_markdown(evaluate_companion_reads(hypernet, base, 10 if args.quick else 60,
                                                                      top_m=args.read_top), name)
        elif args.validation and args.composition:
            from ..evaluation.composition import composition_markdown, evaluate_composition

            table = composition_markdown(evaluate_composition(hypernet, base, 10 if args.quick else 60,
                                                              ranks=args.ranks), name)
        elif args.two_chunk:
            from ..evaluation.prose_pairs import evaluate_pairs, pairs_markdown, question_pairs

            pairs = question_pairs(handwritten_questions())
            table = pairs_markdown(evaluate_pairs(hypernet, base, pairs[:10] if args.quick else pairs), name)
        elif args.validation:
            from ..evaluation.prose import evaluate_written_validation, validation_markdown

            result = evaluate_written_validation(hypernet, base, 10 if args.quick else 60,
                                                 max_new_tokens=48 if args.sentence_answers else 24,
                                                 answers="sentence" if args.sentence_answers else "span")
            table = validation_markdown(result, name)
        else:
            table = evaluate_prose(hypernet, base, quick=args.quick, replies_path=args.replies).to_markdown(name)
    elif args.density:
        top = hypernet.config.max_chunk_tokens
        lengths = [top // 4, top] if args.quick else [top // 4, top // 2, top, 2 * top]
        sheets = 3 if args.quick else 12
        results, in_context = evaluate_density(hypernet, base, lengths, documents=1 if args.quick else 8,
                                               sheets=sheets)
        table = density_markdown(results, in_context, hypernet.config.rank, sheets, top)
    else:
        seed = {} if args.seed is None else {"seed": args.seed}
        config = EvalConfig(needle_lengths=[256, 1024], needle_depths=[0.5], needle_per_cell=2,
                            facts_documents=4, **seed) if args.quick else EvalConfig(**seed)
        table = evaluate_hypernet(hypernet, base, config).to_markdown()
    if args.capacity and not args.prose:
        cap = evaluate_capacity(base, shape, documents=2 if args.quick else 6)
        table += (f"\n\n### Capacity (free rank-{shape.rank} LoRA, {cap['steps']:.0f} Adam steps per "
                  f"document)\n\nexact {cap['exact']:.2f}, contains {cap['contains']:.2f} over {cap['n']:.0f} "
                  f"questions; {cap['seconds_per_step']:.2f} s per step")
    print(table)
    if args.output:
        write_section(args.output, section_name(args), table)
    return 0
