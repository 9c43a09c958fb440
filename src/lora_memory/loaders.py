"""Turning what a user hands the memory (text, files, directories) into plain-text documents.

Supported: a ``str`` (the text itself), UTF-8 text files (``.txt``, ``.md`` and any
other suffix whose content is text), ``.pdf`` (its text layer, via pypdf),
``.html``/``.htm`` (tags stripped), and directories (searched recursively with a
glob pattern; hidden files and folders are skipped). Every failure is a specific
:mod:`lora_memory.errors` exception that names the file.

Document ids are deterministic so re-ingesting the same source replaces, never
duplicates: a file's name, a file's path relative to the directory it was found
in, or ``text-<sha256 prefix>`` for raw text. Every id of a source is known before
any file is read, and two documents of one source with the same id (``dA/notes.txt``
and ``dB/notes.txt`` given as files) raise :class:`~lora_memory.errors.DuplicateDocumentError`
before anything is loaded. A file inside a directory whose name is not valid UTF-8
(or holds control characters) is skipped with a warning, like an unreadable file, and so
is a symbolic link (of a file or of a folder on its way) that leads out of the directory:
an ingest never reads outside the root it was given.

Example:
    >>> [doc] = load_documents("Paris is the capital of France.")
    >>> doc.doc_id.startswith("text-"), doc.text
    (True, 'Paris is the capital of France.')
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from .errors import (
    DocumentNotFoundError,
    DuplicateDocumentError,
    EmptyDocumentError,
    InvalidNameError,
    LoRAMemoryError,
    UnsupportedDocumentError,
)

logger = logging.getLogger(__name__)

Source = str | os.PathLike | Iterable[str | os.PathLike]

SNIFF_BYTES = 8192  # bytes read to decide whether a file is binary
MAX_CONTROL_RATIO = 0.1  # more control characters than this (in the sniffed bytes) means binary
TEXT_ID_PREFIX = "text-"
TEXT_ID_HASH_CHARS = 12
MAX_DOC_ID_CHARS = 1024
_ALLOWED_CONTROL = {ord(c) for c in "\t\n\r\f\v\b\x1b"}
_HTML_SUFFIXES = {".html", ".htm"}
_SPACES = re.compile(r"\s+")
_BLANK_RUNS = re.compile(r"\n{2,}")


@dataclass(frozen=True)
class LoadedDocument:
    """A document's text, its id, where it came from, and user metadata."""

    doc_id: str
    text: str
    source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Planned:
    """A document of a source before it is read: its id, and its file (None: ``text`` is the document)."""

    doc_id: str
    path: Path | None = None
    text: str | None = None


def text_doc_id(text: str) -> str:
    """The deterministic id of a raw-text document: ``text-`` and a prefix of its sha256."""
    return TEXT_ID_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:TEXT_ID_HASH_CHARS]


def check_doc_id(doc_id: str) -> str:
    """Return ``doc_id`` if it can be a document id: a non-empty str of valid UTF-8 without control characters,
    at most ``MAX_DOC_ID_CHARS`` long (ids are manifest keys and lines of ``lora-memory show``, never paths).

    Raises:
        InvalidNameError: anything else.
    """
    problem = _name_problem(doc_id) if isinstance(doc_id, str) else f"is a {type(doc_id).__name__}, not a str"
    if problem is None and not 0 < len(doc_id) <= MAX_DOC_ID_CHARS:
        problem = f"must have 1 to {MAX_DOC_ID_CHARS} characters"
    if problem is not None:
        raise InvalidNameError(f"document id {doc_id!r} {problem}")
    return doc_id


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be stored as a manifest string (None: it can)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds control characters"
    return None


def load_documents(source: Source, *, doc_id: str | None = None, metadata: Mapping[str, Any] | None = None,
                   glob: str = "**/*") -> Iterator[LoadedDocument]:
    """Yield the documents in ``source``, one at a time (so a huge directory is never all in memory).

    Args:
        source: a ``str`` (the text itself, never a path), a path to a file or a
            directory, or an iterable of these.
        doc_id: the id of the single document ``source`` holds; ``ValueError`` when
            it holds more than one.
        metadata: attached to every document.
        glob: pattern selecting files inside directories.

    Every id is known (and checked) before the first file is read, so these errors come
    before any document: ``ValueError``, ``DuplicateDocumentError``, ``InvalidNameError``,
    ``TypeError``, and ``EmptyDocumentError`` for a directory with no matching file.

    Raises:
        DocumentNotFoundError: a path does not exist.
        EmptyDocumentError: a document has no text (a directory: no readable file matched).
        UnsupportedDocumentError: a file is binary, not UTF-8, a corrupt or encrypted PDF, or a
            file given by name has a name that is not valid UTF-8.
        DuplicateDocumentError: two documents of ``source`` would get the same id.
        InvalidNameError: ``doc_id`` is not a valid document id.
        ValueError: ``doc_id`` is given for a source with several documents.
        TypeError: ``source`` is of another type.
    """
    meta = dict(metadata or {})
    groups = list(_plan_source(source, glob))
    planned = [item for _, items in groups for item in items]
    if doc_id is not None:
        if len(planned) > 1:
            raise ValueError("doc_id was given but the source holds more than one document")
        planned[0] = dataclasses.replace(planned[0], doc_id=check_doc_id(doc_id))
        groups = [(groups[0][0], planned)]
    _check_unique(planned)
    for root, items in groups:
        for doc in _load_planned(root, items):
            yield LoadedDocument(doc.doc_id, doc.text, doc.source, {**doc.metadata, **meta})


def _check_unique(planned: list[_Planned]) -> None:
    """Raise :class:`DuplicateDocumentError` naming the first two documents that share an id."""
    first: dict[str, _Planned] = {}
    for item in planned:
        if item.doc_id in first:
            a, b = (str(p.path) if p.path is not None else "a text" for p in (first[item.doc_id], item))
            raise DuplicateDocumentError(
                f"{a} and {b} would both get the document id {item.doc_id!r}, and one would replace the other; "
                "ingest their common parent directory (ids are then paths relative to it), or one at a time "
                "with its own id (--id, doc_id=)")
        first[item.doc_id] = item


def _load_planned(root: Path | None, items: list[_Planned]) -> Iterator[LoadedDocument]:
    """Read planned documents; inside a directory (``root``) an unreadable file is skipped with a warning."""
    loaded = 0
    for item in items:
        if item.path is None:
            yield LoadedDocument(item.doc_id, item.text or "")  # checked to be non-empty when planned
            continue
        try:
            text = load_file(item.path)
        except (EmptyDocumentError, UnsupportedDocumentError) as exc:
            if root is None:
                raise
            logger.warning("skipping %s: %s", item.path, exc)
            continue
        loaded += 1
        yield LoadedDocument(item.doc_id, text, str(item.path.absolute()))
    if root is not None and not loaded:
        raise EmptyDocumentError(f"no readable document in {root}: every matching file was skipped (see the "
                                 "warnings)")


def _plan_source(source: Source, glob: str) -> Iterator[tuple[Path | None, list[_Planned]]]:
    """The documents of ``source`` without reading any file, in groups: (directory root or None, documents)."""
    if isinstance(source, str):
        if "\n" not in source and len(source) < 256 and os.path.exists(source):
            logger.warning("a str is ingested as text, not as the file %r; pass pathlib.Path(%r) to load it",
                           source, source)
        yield None, [_Planned(text_doc_id(_nonempty(source, "the text")), text=source)]
    elif isinstance(source, os.PathLike):
        path = Path(source)
        if path.is_dir():
            yield path, _plan_directory(path, glob)
        else:
            if (problem := _name_problem(str(path.absolute()))) is not None:
                raise UnsupportedDocumentError(f"the file name {str(path)!r} {problem}; rename the file first")
            yield None, [_Planned(path.name, path=path)]
    elif isinstance(source, bytes):
        raise TypeError("bytes are not a document: decode them to str, or pass a file path")
    elif isinstance(source, Iterable):
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(f"expected str text or a path inside the iterable, got {type(item).__name__}")
            yield from _plan_source(item, glob)
    else:
        raise TypeError(f"expected str text, a path, or an iterable of them; got {type(source).__name__}")


def _plan_directory(root: Path, glob: str) -> list[_Planned]:
    """Files under ``root`` matching ``glob`` (hidden ones left out), ids relative to ``root``; a file whose
    name cannot be an id is skipped with a warning.

    Raises:
        EmptyDocumentError: no file matches.
    """
    planned = []
    real_root = root.resolve()
    for path in sorted(root.glob(glob)):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if (problem := _name_problem(str(path.absolute()))) is not None:
            logger.warning("skipping %r: its name %s", str(path), problem)
            continue
        if (problem := _outside_problem(path, real_root)) is not None:
            logger.warning("skipping %s: %s", path, problem)
            continue
        planned.append(_Planned(rel.as_posix(), path=path))
    if not planned:
        raise EmptyDocumentError(f"no readable document in {root} matches {glob!r}")
    return planned


def _outside_problem(path: Path, real_root: Path) -> str | None:
    """Why the file ``path`` (found in the directory ``real_root``, resolved) is not read: it is, or lies under, a
    symbolic link that leads out of the root; None when it stays inside.
    """
    target = path.resolve()
    if target.is_relative_to(real_root):
        return None
    return (f"it is a symbolic link to {target}, outside {real_root} (links out of an ingested directory are not "
            "followed; pass the target itself to ingest it)")


def load_file(path: str | os.PathLike[str]) -> str:
    """The text of one file, chosen by its suffix (``.pdf``, ``.html``/``.htm``, anything else as UTF-8 text).

    Raises:
        DocumentNotFoundError: the file does not exist.
        EmptyDocumentError: the file has no text.
        UnsupportedDocumentError: the file is binary, not UTF-8, or a corrupt or encrypted PDF.
    """
    path = Path(path)
    if not path.exists():
        raise DocumentNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise UnsupportedDocumentError(f"{path} is a directory; pass it as a source to load the files inside")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _load_pdf(path)
    text = _read_text(path)
    if suffix in _HTML_SUFFIXES:
        text = html_to_text(text)
    return _nonempty(text, str(path))


def _nonempty(text: str, what: str) -> str:
    if not text.strip():
        raise EmptyDocumentError(f"{what} has no text (empty or whitespace only)")
    return text


def is_binary(head: bytes) -> bool:
    """Whether the first bytes of a file look binary: a NUL byte, or many control characters."""
    if b"\x00" in head:
        return True
    control = sum(1 for b in head if b < 32 and b not in _ALLOWED_CONTROL)
    return bool(head) and control / len(head) > MAX_CONTROL_RATIO


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if is_binary(data[:SNIFF_BYTES]):
        raise UnsupportedDocumentError(f"{path} looks like a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsupportedDocumentError(f"{path} is not valid UTF-8 text ({exc.reason} at byte {exc.start}); "
                                       "convert it to UTF-8 first") from exc


def _load_pdf(path: Path) -> str:
    """The text layer of a PDF, pages separated by blank lines."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedDocumentError(f"{path} is an encrypted (password-protected) PDF; "
                                           "decrypt it first, e.g. `qpdf --decrypt --password=... in.pdf out.pdf`")
        pages = [page.extract_text() or "" for page in reader.pages]
    except LoRAMemoryError:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # pypdf raises many types on malformed input; all mean "this file cannot be read as a PDF".
        raise UnsupportedDocumentError(f"{path} is not a readable PDF: {exc}") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise EmptyDocumentError(f"{path} has no text layer (a scanned PDF?); run OCR on it first")
    return text


class _TextExtractor(HTMLParser):
    """Collects an HTML page's visible text, with line breaks at block elements.

    Whitespace inside text collapses to one space, as a browser renders it, except in ``<pre>``.
    """

    _SKIP = {"script", "style", "noscript", "template"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "header", "footer", "pre", "blockquote", "table", "ul", "ol", "dt", "dd", "hr", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._depth = {"skip": 0, "pre": 0}

    def _enter(self, tag: str, step: int) -> None:
        if tag in self._SKIP:
            self._depth["skip"] = max(0, self._depth["skip"] + step)
        elif tag in self._BLOCK:
            self.parts.append("\n")
            if tag == "pre":
                self._depth["pre"] = max(0, self._depth["pre"] + step)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._enter(tag, +1)

    def handle_endtag(self, tag: str) -> None:
        self._enter(tag, -1)

    def handle_data(self, data: str) -> None:
        if not self._depth["skip"]:
            self.parts.append(data if self._depth["pre"] else _SPACES.sub(" ", data))


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (and its title): scripts and styles dropped, whitespace tidied."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()
