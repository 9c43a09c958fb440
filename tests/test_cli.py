"""The ``lora-memory`` command, run in-process on saved tiny models: output streams, JSON shape, exit codes."""

from __future__ import annotations

import json
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
                           "closed_book"}
    assert [s["doc_id"] for s in answer["sources"]] == ["zebra.md"] and answer["adapter_rank"] == 8
    assert set(answer["sources"][0]) == {"doc_id", "chunk_index", "metadata", "snippet", "score"}
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
    monkeypatch.setitem(sys.modules, "lora_memory.tasks", None)
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
