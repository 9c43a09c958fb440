"""The ``lora-memory`` command, run in-process on saved tiny models: output streams, JSON shape, exit codes."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from lora_memory import LoRAMemory, MemoryConfig
from lora_memory.cli import COMMANDS, EXIT_ERROR, EXIT_INTERRUPTED, main
from lora_memory.generation import GenerationConfig
from lora_memory.paths import HOME_ENV
from memory_support import save_models, tiny_hypernet

ZEBRA = "Zebras live on the African savanna. Their stripes confuse biting flies and hungry lions alike."
QUESTION = "Where do zebras live?"


@pytest.fixture(scope="module")
def model_args(tmp_path_factory, tiny_llama) -> list[str]:
    """Global options naming the saved tiny base model and hypernetwork."""
    base_dir, hypernet_dir = save_models(tiny_llama, tiny_hypernet(tiny_llama), tmp_path_factory.mktemp("models"))
    return ["--base-model", str(base_dir), "--hypernet", str(hypernet_dir), "--dtype", "fp32"]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, model_args):
    """Runs ``main`` with the tiny models and a fresh ``--home``; returns (exit code, stdout, stderr)."""
    home = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(home))  # restored after the test, whatever --home sets

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*model_args, "--home", str(home), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def notes(tmp_path) -> Path:
    path = tmp_path / "zebra.md"
    path.write_text(ZEBRA)
    return path


def _library_answer(model_args: list[str], **generation) -> str:
    config = MemoryConfig(base_model=model_args[1], hypernet=model_args[3], dtype="fp32",
                          generation=GenerationConfig(**generation))
    return LoRAMemory.open("notes", config=config).ask(QUESTION).text


def test_ingest_list_show_ask_rm(cli, notes, model_args):
    code, out, _ = cli("ingest", str(notes), "-c", "notes")  # stderr: model-loading progress
    assert (code, out) == (0, "zebra.md\n")
    code, out, _ = cli("list")
    assert (code, out) == (0, "notes\t1 documents\n")
    code, out, _ = cli("show", "notes")
    assert code == 0 and out.startswith("zebra.md\t1 chunks\t") and out.rstrip().endswith(str(notes))
    code, out, _ = cli("ask", QUESTION, "-c", "notes", "--max-new-tokens", "4")
    assert code == 0 and out == _library_answer(model_args, max_new_tokens=4) + "\n"
    code, streamed, _ = cli("ask", QUESTION, "-c", "notes", "--max-new-tokens", "4", "--stream")
    assert code == 0 and streamed == out
    assert cli("rm", "zebra.md", "-c", "notes") == (0, "", "")  # no model needed, nothing logged
    assert cli("show", "notes") == (0, "", "")


def test_ask_json_shape(cli, notes):
    cli("ingest", str(notes), "-c", "notes")
    code, out, _ = cli("ask", QUESTION, "-c", "notes", "--json", "--max-new-tokens", "3")
    assert code == 0 and out.count("\n") == 1
    answer = json.loads(out)
    assert set(answer) == {"answer", "sources", "timings", "adapter_rank", "prompt_tokens", "completion_tokens",
                           "closed_book", "closed_book_reason", "damaged"}
    assert [s["doc_id"] for s in answer["sources"]] == ["zebra.md"] and answer["adapter_rank"] == 8
    assert set(answer["sources"][0]) == {"doc_id", "chunk_index", "metadata", "snippet", "score", "relevance"}
    assert answer["closed_book"] is False and answer["damaged"] == []
    assert set(answer["timings"]) == {"compose", "generate", "total"} and answer["completion_tokens"] <= 3


def test_list_and_show_json(cli, notes):
    cli("ingest", str(notes), "-c", "notes", "--id", "z")
    code, out, _ = cli("list", "--json")
    assert code == 0 and json.loads(out) == [{"name": "notes", "documents": 1}]
    code, out, _ = cli("show", "notes", "--json")
    [doc] = json.loads(out)
    assert doc["doc_id"] == "z" and doc["n_chunks"] == 1 and doc["source"] == str(notes)


def test_ask_empty_collection_is_closed_book(cli, caplog):
    code, out, _ = cli("ask", QUESTION, "-c", "nothing", "--json")
    assert code == 0 and json.loads(out)["closed_book"] is True
    assert "'nothing' is empty" in caplog.text  # logged (to stderr outside pytest)


def test_export_writes_peft_directory(cli, notes, tmp_path):
    cli("ingest", str(notes), "-c", "notes")
    code, out, _ = cli("export", "-c", "notes", str(tmp_path / "peft"), "--max-rank", "4")
    assert code == 0 and out == f"{tmp_path / 'peft'}\n"
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4


def test_global_options_after_the_subcommand(model_args, tmp_path, monkeypatch, capsys, notes):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    assert main(["ingest", str(notes), "-c", "late", *model_args, "--home", str(tmp_path / "home")]) == 0
    assert capsys.readouterr().out == "zebra.md\n"
    assert (tmp_path / "home" / "collections" / "late" / "manifest.json").is_file()


def test_threads_option_sets_torch_threads(cli, notes):
    before = torch.get_num_threads()
    try:
        assert cli("--threads", "1", "ingest", str(notes), "-c", "notes")[0] == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    code, _, err = cli("--threads", "0", "list")
    assert code == EXIT_ERROR and "--threads must be at least 1" in err


@pytest.mark.parametrize("args, message", [
    (("ingest", "missing.txt", "-c", "notes"), "no such file"),
    (("rm", "ghost", "-c", "notes"), "no collection"),
    (("show", "ghost"), "no collection"),
    (("ask", QUESTION, "-c", "notes", "--top-k", "0"), "top_k"),
    (("ask", QUESTION, "-c", "bad/name"), "name"),
])
def test_errors_are_one_line_on_stderr(cli, args, message):
    code, out, err = cli(*args)
    assert code == EXIT_ERROR and out == ""
    [line] = [line for line in err.splitlines() if "error" in line]  # other lines: model-loading progress
    assert line.startswith("lora-memory: error: ") and message in line


HOSTILE_NAMES = ["../../outside/victim", "/abs/dir", "..", "a/b", "notes\n", ""]
COMMANDS_WITH_NAMES = {  # every command that takes a collection name, with the rest of its arguments
    "show": lambda name, notes, out: ("show", name),
    "rm": lambda name, notes, out: ("rm", "zebra.md", "-c", name),
    "ask": lambda name, notes, out: ("ask", QUESTION, "-c", name),
    "ingest": lambda name, notes, out: ("ingest", str(notes), "-c", name),
    "export": lambda name, notes, out: ("export", "-c", name, str(out)),
    "check": lambda name, notes, out: ("check", "-c", name),
}


@pytest.fixture
def victim(cli, notes, tmp_path) -> Path:
    """A collection outside the home, where ``../../outside/victim`` from the collections directory points."""
    directory = tmp_path / "outside" / "victim"
    assert cli("ingest", str(notes), "--directory", str(directory))[0] == 0
    return directory


@pytest.mark.parametrize("command", COMMANDS_WITH_NAMES)
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_collection_names_are_refused_on_every_command(cli, notes, tmp_path, victim, command, name):
    before = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}
    code, out, err = cli(*COMMANDS_WITH_NAMES[command](name, notes, tmp_path / "peft"))
    assert code == EXIT_ERROR and out == "" and "error: name: collection names use letters" in err
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "peft").exists()


def test_list_marks_a_collection_with_a_corrupt_manifest(cli, notes):
    cli("ingest", str(notes), "-c", "good")
    cli("ingest", str(notes), "-c", "bad")
    manifest = Path(os.environ[HOME_ENV]) / "collections" / "bad" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"documents"', '"documentz"'))
    code, out, _ = cli("list")
    assert code == 0 and out.splitlines() == ["bad\tcorrupt manifest (see `lora-memory show` for the error)",
                                              "good\t1 documents"]
    code, _, err = cli("show", "bad")
    assert code == EXIT_ERROR and "not a valid manifest" in err and "documents" in err


def test_a_directory_is_opened_only_with_directory(cli, victim, notes):
    code, out, _ = cli("show", "--directory", str(victim))
    assert code == 0 and out.startswith("zebra.md\t")
    assert cli("rm", "zebra.md", "--directory", str(victim)) == (0, "", "")
    assert cli("show", "--directory", str(victim)) == (0, "", "")
    with pytest.raises(SystemExit) as info:  # a name and a directory at once: a usage error
        cli("show", "notes", "--directory", str(victim))
    assert info.value.code == 2


def test_same_name_files_are_refused(cli, tmp_path):
    paths = []
    for folder in ("dA", "dB"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "notes.txt")
        paths[-1].write_text(f"Notes of {folder}: the meeting is on a different day.")
    code, out, err = cli("ingest", *map(str, paths), "-c", "coll")
    assert code == EXIT_ERROR and out == "" and "'notes.txt'" in err
    assert cli("show", "coll")[2].startswith("lora-memory: error: no collection")  # nothing was committed
    code, out, _ = cli("ingest", str(tmp_path), "--glob", "d*/*.txt", "-c", "coll")
    assert (code, out) == (0, "dA/notes.txt\ndB/notes.txt\n")


def test_check_reports_and_repairs(cli, notes):
    cli("ingest", str(notes), "-c", "notes")
    assert cli("check", "-c", "notes") == (0, "notes: 1 documents, 1 chunk files, 0 damaged\n", "")
    [chunk] = (Path(os.environ[HOME_ENV]) / "collections" / "notes" / "adapters").glob("*.safetensors")
    chunk.write_bytes(chunk.read_bytes()[:100])
    code, out, _ = cli("check", "-c", "notes")
    assert code == EXIT_ERROR and "1 damaged" in out and f"zebra.md\tdamaged\t{chunk.name}" in out
    code, out, _ = cli("check", "-c", "notes", "--repair", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["damaged"][0]["repaired"] == "from the adapter cache"
    assert cli("check", "-c", "notes")[0] == 0


def test_export_refuses_ranks_vllm_cannot_serve(cli, tmp_path):
    long = tmp_path / "long.txt"  # 8 x (chunks + 1) > 512 from 64 chunks of the tiny hypernetwork's 32 tokens
    long.write_text(" ".join(f"Item {i} of the inventory is a crate of {i * 7} bolts." for i in range(160)))
    cli("ingest", str(long), "-c", "big")
    assert json.loads(cli("show", "big", "--json")[1])[0]["n_chunks"] >= 64
    code, out, err = cli("export", "-c", "big", str(tmp_path / "peft"))
    assert code == EXIT_ERROR and out == "" and "--max-rank 512" in err and not (tmp_path / "peft").exists()
    assert cli("export", "-c", "big", str(tmp_path / "peft"), "--max-rank", "512")[0] == 0
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] <= 512  # the tiny model: 64


def test_id_with_several_paths_and_missing_document(cli, notes, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("Other text.")
    code, _, err = cli("ingest", str(notes), str(other), "-c", "notes", "--id", "one")
    assert code == EXIT_ERROR and "more than one" in err
    cli("ingest", str(notes), "-c", "notes")
    code, _, err = cli("rm", "ghost", "-c", "notes")
    assert code == EXIT_ERROR and "'ghost'" in err


def test_task_without_text_to_lora_is_a_clear_error(cli, notes, monkeypatch):
    cli("ingest", str(notes), "-c", "notes")
    monkeypatch.setattr("lora_memory.tasks.default_t2l_dir", lambda: notes.parent / "no-t2l-here")
    code, out, err = cli("ask", QUESTION, "-c", "notes", "--task", "be brief")
    assert code == EXIT_ERROR and out == "" and "Text-to-LoRA" in err


@pytest.mark.parametrize("args", [(), ("ask", "q", "--json", "--stream"), ("frobnicate",)])
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2 and capsys.readouterr().err


def test_demo_calls_the_demo_module(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(sys.modules, "lora_memory.demo", types.SimpleNamespace(main=lambda argv=None: calls.append(argv)))
    assert main(["demo"]) == 0 and calls == [[]]


def test_registered_commands_run_and_interrupts_exit_130(monkeypatch, capsys):
    def add_arguments(parser):
        parser.add_argument("--steps", type=int, default=1)

    def train(args):
        """Train something."""
        if args.steps < 0:
            raise KeyboardInterrupt
        print(f"trained {args.steps} on {args.base_model}")
        return 0

    monkeypatch.setitem(COMMANDS, "train", (add_arguments, train))
    assert main(["train", "--steps", "3"]) == 0
    assert capsys.readouterr().out == "trained 3 on embedded\n"
    assert main(["train", "--steps", "-1"]) == EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err


ETNA = "Mount Etna is an active volcano in Sicily. Its eruptions have been recorded for three thousand years."


def _files_holding(directory: Path, text: str) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_cache_prune_drops_removed_text_and_clear_drops_all(cli, notes, tmp_path):
    etna = tmp_path / "etna.md"
    etna.write_text(ETNA)
    assert cli("ingest", str(notes), "-c", "keep")[0] == 0
    assert cli("ingest", str(etna), "-c", "gone")[0] == 0
    cache_dir = Path(os.environ[HOME_ENV]) / "adapter-cache"
    assert _files_holding(cache_dir, ETNA)  # what the cache keeps: each chunk's text, in plain text
    assert cli("rm", "etna.md", "-c", "gone")[0] == 0
    assert _files_holding(cache_dir, ETNA)  # a removed document's text stays until the cache is pruned
    code, out, _ = cli("cache", "prune")
    assert code == 0 and out.startswith("removed 1 entries; 1 left")
    assert not _files_holding(cache_dir, ETNA) and _files_holding(cache_dir, ZEBRA)
    assert cli("check", "-c", "keep")[0] == 0 and cli("cache", "prune")[1].startswith("removed 0 entries")
    code, out, _ = cli("cache", "clear")
    assert code == 0 and out.startswith("removed 1 entries; 0 left") and not _files_holding(cache_dir, ZEBRA)
    code, out, _ = cli("ask", QUESTION, "-c", "keep", "--json")  # the collection keeps its own chunk files
    assert code == 0 and [s["doc_id"] for s in json.loads(out)["sources"]] == ["zebra.md"]


def test_cache_prune_refuses_while_a_manifest_is_corrupt(cli, notes):
    cli("ingest", str(notes), "-c", "notes")
    manifest = Path(os.environ[HOME_ENV]) / "collections" / "notes" / "manifest.json"
    manifest.write_text("[]")
    code, out, err = cli("cache", "prune")
    assert code == EXIT_ERROR and out == "" and "notes/manifest.json is not a valid manifest" in err
    assert "removed" not in err


@pytest.mark.parametrize("config", ["[1, 2, 3]", "null", '{"rank": 8', "7", '"text"'])
def test_a_malformed_hypernetwork_config_is_a_one_line_error(cli, notes, tmp_path, model_args, config):
    bad = tmp_path / "bad-hypernet"
    bad.mkdir()
    for path in Path(model_args[3]).iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    (bad / "config.json").write_text(config)
    code, out, err = cli("--hypernet", str(bad), "ingest", str(notes), "-c", "notes")
    assert code == EXIT_ERROR and out == ""
    [line] = [line for line in err.splitlines() if "error" in line]
    assert line.startswith("lora-memory: error: cannot read Doc-to-LoRA hypernetwork in ") and str(bad) in line
    assert "Traceback" not in err
