"""The process-level faults of tests/test_faults.py, in a process of its own: ``python fault_worker.py CONFIG.json``.

It loads the saved tiny models once, then forks its writers and readers (so each costs
no import or model load) and prints one JSON report on stdout:

- ``kill``: for each seed, up to ``kills`` times (and within ``seconds`` in all): fork a
  writer that adds, replaces and removes documents (each operation announced on a pipe
  before it starts and after it returns), SIGKILL it after a random delay, then check the
  collection from here: the manifest opens, every operation that returned is in it, the
  one in flight is either wholly there or wholly absent, no chunk file is damaged;
- ``concurrent``: fork ``writers`` writers (distinct documents each) and ``readers``
  readers that list and ask in a loop until the writers are done; every reader call must
  succeed and every document must be there at the end.

The parent never runs the models itself, and closes the adapter cache's SQLite connection
before forking, so no child inherits a lock or an open connection. Each child also gets a
tqdm lock of its own: tqdm's default lock holds a multiprocessing semaphore that forked
processes share, and a child killed while holding it (``tqdm(disable=True)`` takes it too)
would leave every later child blocked on it forever. Every wait on a child is bounded
(``wait_s``): a child that hangs is killed and reported as a problem, not waited on.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import std as tqdm_std

torch.set_num_threads(1)

from lora_memory.collection import Collection
from lora_memory.config import MemoryConfig
from lora_memory.generation import GenerationConfig
from lora_memory.ingest import content_sha256
from lora_memory.memory import LoRAMemory

WORDS = ("zebra volcano river tower copper market seven north glass orchard signal lantern harbour winter "
         "eruption company iron savanna stripes lions bees colony chess india persia").split()


def random_text(rng: random.Random) -> str:
    """Two to four sentences of random words: two to four chunks of the tiny hypernetwork (32 tokens)."""
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 25))).capitalize() + "."
                    for _ in range(rng.randint(2, 4)))


def open_memory(config: dict, directory: Path, models: LoRAMemory | None = None) -> LoRAMemory:
    """The collection at ``directory``; with ``models`` (in a forked child) on their already loaded models, so the
    child gets its own lock and cache connection and loads nothing."""
    settings = MemoryConfig(base_model=config["base"], hypernet=config["hypernet"], dtype="fp32", device="cpu",
                            cache_dir=config["cache"], ingest_batch_size=1, lock_timeout_s=120,
                            generation=GenerationConfig(max_new_tokens=3))
    memory = LoRAMemory.open(directory.name, directory=directory, config=settings,
                             base=models.base if models else None, hypernet=models.hypernet if models else None)
    memory.cache.close()  # the parent's connection is never used again; a child opens its own
    return memory


def fork() -> int:
    """``os.fork()``; the child's tqdm classes get a process-private lock (see the module docstring)."""
    pid = os.fork()
    if pid == 0:
        classes = [tqdm_std.tqdm]
        while classes:
            cls = classes.pop()
            classes += cls.__subclasses__()
            if "_lock" in vars(cls):
                cls._lock = threading.RLock()
    return pid


def wait_exit(pid: int, seconds: float) -> int | None:
    """The exit code of child ``pid``, or None if it did not exit within ``seconds`` (it is then killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def say(fd: int, *words: str) -> None:
    os.write(fd, (" ".join(words) + "\n").encode())  # one write (< PIPE_BUF): a line arrives whole or not at all


def write_forever(memory: LoRAMemory, rng: random.Random, fd: int) -> None:
    """Add, replace and remove documents until killed, announcing each operation before and after."""
    memory.list()
    say(fd, "ready")
    while True:
        ids = [d.doc_id for d in memory.list()]
        op = rng.choice(["add", "add", "replace", "remove"] if ids else ["add"])
        if op == "remove":
            doc_id = rng.choice(ids)
            say(fd, "begin", "remove", doc_id, "-")
            memory.delete(doc_id)
        else:
            doc_id = rng.choice(ids) if op == "replace" else f"doc-{rng.getrandbits(40):010x}"
            text = random_text(rng)
            say(fd, "begin", op, doc_id, content_sha256(text))
            memory.add(text, doc_id=doc_id, progress=False)
        say(fd, "done")


def state(directory: Path) -> dict[str, str]:
    """Doc id -> content checksum of what the collection holds (raises if the manifest does not open)."""
    return {doc_id: record.content_sha256 for doc_id, record in Collection(directory).documents.items()}


def apply(docs: dict[str, str], op: list[str]) -> dict[str, str]:
    docs = dict(docs)
    kind, doc_id, sha = op
    if kind == "remove":
        docs.pop(doc_id, None)
    else:
        docs[doc_id] = sha
    return docs


def kill_loop(config: dict, memory: LoRAMemory, directory: Path) -> dict:
    report = {"kills": 0, "operations_done": 0, "writing_seconds": 0.0, "killed_mid_operation": 0, "documents_checked": 0,
              "documents_lost": 0, "damaged_documents": 0, "unopenable": 0, "problems": []}
    deadline = time.monotonic() + config["seconds"]
    for seed in config["seeds"]:
        rng = random.Random(seed)
        for k in range(config["kills"]):
            if time.monotonic() > deadline:
                break
            before = state(directory)
            read, write = os.pipe()
            pid = fork()
            if pid == 0:
                os.close(read)
                try:
                    write_forever(open_memory(config, directory, memory), random.Random(seed * 1000 + k), write)
                except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
                    say(write, "error", type(exc).__name__, str(exc).replace("\n", " ")[:200])
                finally:
                    os._exit(1)
            os.close(write)
            if not select.select([read], [], [], config["wait_s"])[0]:  # "ready", or an error line
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(read)
                report["problems"].append(f"seed {seed} kill {k}: the writer hung before it was ready")
                continue
            pipe = os.fdopen(read, "rb")
            ready = pipe.readline()  # the random delay starts when the writer is about to write
            delay = rng.uniform(0, config["max_delay_s"])
            report["writing_seconds"] += delay
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            with pipe:
                lines = [ready.decode().strip()] + pipe.read().decode().splitlines()
            lines = [line for line in lines if line != "ready"]
            report["kills"] += 1
            if not os.WIFSIGNALED(status) or any(line.startswith("error") for line in lines):
                report["problems"].append(f"seed {seed} kill {k}: the writer failed before the kill: {lines[-1:]}")
                lines = [line for line in lines if not line.startswith("error")]
            committed, in_flight = before, None
            for line in lines:
                if line == "done":
                    committed, in_flight = apply(committed, in_flight), None
                    report["operations_done"] += 1
                else:
                    in_flight = line.split()[1:]
            try:
                now = state(directory)
                damaged = Collection(directory).verify()
            except Exception as exc:  # noqa: BLE001 - any failure to open is what this loop looks for
                report["unopenable"] += 1
                report["problems"].append(f"seed {seed} kill {k}: {type(exc).__name__}: {exc}")
                continue
            allowed = [committed] + ([apply(committed, in_flight)] if in_flight else [])
            report["killed_mid_operation"] += in_flight is not None
            report["documents_checked"] += len(committed)
            if now not in allowed:
                lost = [d for d in committed if now.get(d) != committed[d] and (not in_flight or d != in_flight[1])]
                report["documents_lost"] += len(lost)
                report["problems"].append(f"seed {seed} kill {k}: expected {allowed}, found {now}")
            report["damaged_documents"] += len(damaged)
    return report


def concurrent(config: dict, memory: LoRAMemory, directory: Path) -> dict:
    rng = random.Random(config["seeds"][0])
    plans = [{f"w{w}-{i}": random_text(rng) for i in range(config["docs_per_writer"])}
             for w in range(config["writers"])]
    writers = []
    for docs in plans:
        pid = fork()
        if pid == 0:
            code = 1
            try:
                mine = open_memory(config, directory, memory)
                for doc_id, text in docs.items():
                    mine.add(text, doc_id=doc_id, progress=False)
                code = 0
            finally:
                os._exit(code)
        writers.append(pid)
    done_flag = directory.parent / "writers-done"
    readers = []
    for r in range(config["readers"]):
        read, write = os.pipe()
        pid = fork()
        if pid == 0:
            os.close(read)
            calls = errors = 0
            try:
                mine = open_memory(config, directory, memory)
                while not done_flag.exists():
                    try:
                        listed = mine.list()
                        mine.ask(rng.choice(WORDS) + "?")
                        if listed:
                            mine.get(listed[-1].doc_id)
                    except Exception as exc:  # noqa: BLE001 - a reader must never fail while others write
                        errors += 1
                        say(write, "error", type(exc).__name__, str(exc).replace("\n", " ")[:200])
                    calls += 1
                say(write, "calls", str(calls), str(errors))
            finally:
                os._exit(0)
        os.close(write)
        readers.append((pid, read))
    codes = [wait_exit(pid, config["wait_s"]) for pid in writers]  # None: it hung and was killed
    done_flag.touch()
    reader_lines = []
    for pid, read in readers:
        chunks, deadline = [], time.monotonic() + config["wait_s"]
        while select.select([read], [], [], max(0.0, deadline - time.monotonic()))[0] and (data := os.read(read, 65536)):
            chunks.append(data)  # until the reader exits (end of file) or the deadline
        os.close(read)
        reader_lines += b"".join(chunks).decode().splitlines()
        if wait_exit(pid, 1.0) is None:
            reader_lines.append(f"error reader {pid} hung after the writers were done")
    calls = [line.split() for line in reader_lines if line.startswith("calls")]
    expected = {doc_id: content_sha256(text) for docs in plans for doc_id, text in docs.items()}
    found = state(directory)
    return {"writers": len(writers), "writer_exit_codes": codes, "documents": len(expected),
            "documents_lost": sum(found.get(d) != sha for d, sha in expected.items()),
            "damaged_documents": len(Collection(directory).verify()),
            "reader_calls": sum(int(c[1]) for c in calls), "reader_errors": sum(int(c[2]) for c in calls),
            "problems": [line for line in reader_lines if line.startswith("error")]}


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    root = Path(config["root"])
    report = {}
    for phase, run in (("kill", kill_loop), ("concurrent", concurrent)):
        directory = root / phase / "shared"
        directory.parent.mkdir(parents=True)
        start = time.monotonic()
        report[phase] = run(config, open_memory(config, directory), directory)
        report[phase]["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
