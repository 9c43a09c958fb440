"""Loading sources into text: every supported format and every kind of bad input."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from lora_memory.errors import (
    DocumentNotFoundError,
    DuplicateDocumentError,
    EmptyDocumentError,
    InvalidNameError,
    UnsupportedDocumentError,
)
from lora_memory.loaders import check_doc_id, html_to_text, is_binary, load_documents, load_file, text_doc_id


def make_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF with a text layer (Helvetica), xref offsets computed."""
    text_ops = " ".join(f"({line}) Tj 0 -20 Td" for line in lines)
    stream = f"BT /F1 12 Tf 72 720 Td {text_ops} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _write_pdf(writer: PdfWriter, path: Path) -> Path:
    with open(path, "wb") as f:
        writer.write(f)
    return path


@pytest.fixture
def pdf_path(tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf(["The launch moved to March 14.", "Budget: 42 thousand euros."]))
    return path


# ------------------------------------------------------------------- raw text
def test_text_gets_deterministic_id_and_metadata():
    [doc] = load_documents("Paris is the capital of France.", metadata={"lang": "en"})
    assert doc.text == "Paris is the capital of France."
    assert doc.doc_id == text_doc_id(doc.text) and doc.doc_id.startswith("text-")
    assert [d.doc_id for d in load_documents("Paris is the capital of France.")] == [doc.doc_id]
    assert text_doc_id("other text") != doc.doc_id
    assert doc.source is None and doc.metadata == {"lang": "en"}


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_raises(text):
    with pytest.raises(EmptyDocumentError):
        list(load_documents(text))


def test_str_naming_a_file_is_text_with_a_warning(tmp_path, monkeypatch, caplog):
    (tmp_path / "notes.txt").write_text("file content")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lora_memory.loaders"):
        [doc] = load_documents("notes.txt")
    assert doc.text == "notes.txt"
    assert "pathlib.Path" in caplog.text


@pytest.mark.parametrize("bad", [b"bytes", 42, [b"bytes"]])
def test_wrong_source_types_raise_type_error(bad):
    with pytest.raises(TypeError):
        list(load_documents(bad))


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("name", ["notes.txt", "README.md", "script.py", "NOSUFFIX"])
def test_text_files(tmp_path, name):
    path = tmp_path / name
    path.write_text("Zebras eat grass.\nÉté à Paris.\n", encoding="utf-8")
    [doc] = load_documents(path, metadata={"k": 1})
    assert doc.text == "Zebras eat grass.\nÉté à Paris.\n"
    assert doc.doc_id == name and doc.source == str(path) and doc.metadata == {"k": 1}


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffhello".encode("utf-8"))
    assert load_file(path) == "hello"


def test_undecodable_text_raises(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café crème, déjà vu".encode("latin-1"))
    with pytest.raises(UnsupportedDocumentError, match="not valid UTF-8"):
        load_file(path)


@pytest.mark.parametrize("data", [b"PK\x03\x04\x00\x00binary zip", bytes(range(1, 32)) * 20 + b"some text"])
def test_binary_files_raise(tmp_path, data):
    path = tmp_path / "blob.txt"
    path.write_bytes(data)
    with pytest.raises(UnsupportedDocumentError, match="binary"):
        load_file(path)


def test_is_binary_allows_ordinary_whitespace_and_escapes():
    assert not is_binary(b"line one\r\n\tindented\x0cpage\x1b[1mbold\x1b[0m")
    assert not is_binary(b"")
    assert is_binary(b"text\x00")


def test_missing_file_raises(tmp_path):
    with pytest.raises(DocumentNotFoundError, match="no such file"):
        list(load_documents(tmp_path / "absent.txt"))


def test_empty_file_raises(tmp_path):
    path = tmp_path / "empty.md"
    path.write_text("\n\n  ")
    with pytest.raises(EmptyDocumentError, match="empty.md"):
        load_file(path)


def test_doc_id_overrides_file_name(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("alpha")
    assert [d.doc_id for d in load_documents(path, doc_id="custom")] == ["custom"]


# ------------------------------------------------------------------------ html
def test_html_is_stripped_to_visible_text(tmp_path):
    path = tmp_path / "page.HTM"
    path.write_text("<html><head><title>Zoo</title><style>p {color: red}</style></head><body>"
                    "<h1>Animals</h1><p>Zebras &amp; lions</p><script>var secret = 1;</script>"
                    "<ul><li>one</li><li>two</li></ul></body></html>")
    text = load_file(path)
    assert text == "Zoo\n\nAnimals\n\nZebras & lions\n\none\n\ntwo"
    assert "secret" not in text and "color" not in text


def test_html_without_visible_text_is_empty(tmp_path):
    path = tmp_path / "blank.html"
    path.write_text("<html><script>only()</script></html>")
    with pytest.raises(EmptyDocumentError):
        load_file(path)


def test_html_to_text_collapses_whitespace():
    assert html_to_text("<p>a   b\n c</p><p></p><p>d</p>") == "a b c\n\nd"


# ------------------------------------------------------------------------- pdf
def test_pdf_text_layer(pdf_path):
    [doc] = load_documents(pdf_path)
    assert doc.doc_id == "report.pdf"
    assert "The launch moved to March 14." in doc.text
    assert "Budget: 42 thousand euros." in doc.text


def test_encrypted_pdf_raises_clearly(pdf_path, tmp_path):
    writer = PdfWriter(clone_from=PdfReader(pdf_path))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    path = _write_pdf(writer, tmp_path / "locked.pdf")
    with pytest.raises(UnsupportedDocumentError, match="encrypted"):
        load_file(path)


def test_pdf_with_only_an_owner_password_is_read(pdf_path, tmp_path):
    writer = PdfWriter(clone_from=PdfReader(pdf_path))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    path = _write_pdf(writer, tmp_path / "owner-only.pdf")
    assert "March 14" in load_file(path)


@pytest.mark.parametrize("corrupt", [lambda b: b[: len(b) // 3], lambda b: b"%PDF-1.4\nthis is not a pdf\n",
                                     lambda b: b"plain text renamed to pdf"])
def test_corrupt_pdf_raises(tmp_path, corrupt):
    path = tmp_path / "broken.pdf"
    path.write_bytes(corrupt(make_pdf(["hello world"])))
    with pytest.raises(UnsupportedDocumentError, match="broken.pdf"):
        load_file(path)


def test_pdf_without_text_layer_is_empty(tmp_path):
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    path = _write_pdf(writer, tmp_path / "scan.pdf")
    with pytest.raises(EmptyDocumentError, match="no text layer"):
        load_file(path)


# ------------------------------------------------------------------ directories
@pytest.fixture
def tree(tmp_path: Path, pdf_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.md").write_text("bravo")
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "c.md").write_text("charlie")
    (root / "sub" / "report.pdf").write_bytes(pdf_path.read_bytes())
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (root / "empty.txt").write_text("")
    (root / ".hidden.md").write_text("hidden")
    (root / ".git" / "config").write_text("git internals")
    return root


def test_directory_is_read_recursively_in_order(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_memory.loaders"):
        docs = list(load_documents(tree, metadata={"corpus": "t"}))
    assert [d.doc_id for d in docs] == ["a.txt", "b.md", "sub/c.md", "sub/report.pdf"]
    assert docs[2].text == "charlie" and docs[2].source == str(tree / "sub" / "c.md")
    assert all(d.metadata == {"corpus": "t"} for d in docs)
    assert "image.png" in caplog.text and "empty.txt" in caplog.text  # skipped, with a reason


def test_directory_glob_filters(tree):
    assert [d.doc_id for d in load_documents(tree, glob="**/*.md")] == ["b.md", "sub/c.md"]
    assert [d.doc_id for d in load_documents(tree, glob="*.md")] == ["b.md"]


def test_directory_without_readable_files_raises(tree):
    with pytest.raises(EmptyDocumentError, match="no readable document"):
        list(load_documents(tree, glob="**/*.rst"))


def test_doc_id_with_several_documents_raises(tree):
    with pytest.raises(ValueError, match="more than one"):
        list(load_documents(tree, doc_id="one"))


def test_iterable_of_text_and_paths(tree):
    docs = list(load_documents(["raw text", tree / "a.txt", tree / "sub"]))
    assert [d.doc_id for d in docs] == [text_doc_id("raw text"), "a.txt", "c.md", "report.pdf"]


def test_iterable_stops_at_the_first_bad_item(tree):
    docs = load_documents([tree / "a.txt", tree / "missing.txt"])
    assert next(docs).doc_id == "a.txt"
    with pytest.raises(DocumentNotFoundError):
        next(docs)


# ------------------------------------------------------------------ ids and names
def test_same_name_files_raise_before_any_is_read(tmp_path):
    for folder in ("dA", "dB"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.txt").write_text(folder)
    docs = load_documents([tmp_path / "dA" / "notes.txt", tmp_path / "dB" / "notes.txt"])
    with pytest.raises(DuplicateDocumentError, match="dA/notes.txt and .*dB/notes.txt .*'notes.txt'"):
        next(docs)
    assert [d.doc_id for d in load_documents(tmp_path)] == ["dA/notes.txt", "dB/notes.txt"]  # relative to the root
    with pytest.raises(DuplicateDocumentError):
        list(load_documents(["same text", "same text"]))


def test_relative_paths_are_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("alpha")
    monkeypatch.chdir(tmp_path)
    [doc] = load_documents(Path("a.txt"))
    assert doc.source == str(tmp_path / "a.txt")


@pytest.mark.parametrize("name", [b"bad-\xff.txt", b"line\nbreak.txt"])
def test_directory_skips_file_names_that_cannot_be_ids(tmp_path, caplog, name):
    (tmp_path / "good.txt").write_text("good")
    with open(os.path.join(os.fsencode(tmp_path), name), "w") as f:
        f.write("text under a bad name")
    with caplog.at_level(logging.WARNING, logger="lora_memory.loaders"):
        assert [d.doc_id for d in load_documents(tmp_path)] == ["good.txt"]
    assert "skipping" in caplog.text and ("UTF-8" in caplog.text or "control characters" in caplog.text)
    bad = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name)))
    with pytest.raises((UnsupportedDocumentError, InvalidNameError)):
        list(load_documents(bad))  # named on its own, it is an error, not a silent skip


@pytest.mark.parametrize("bad", ["", "a\nb", "\udcff", "x" * 5000])
def test_invalid_doc_ids_raise(bad):
    with pytest.raises(InvalidNameError, match="document id"):
        list(load_documents("some text", doc_id=bad))
    with pytest.raises(InvalidNameError):
        check_doc_id(bad)
    assert check_doc_id("notes/2024 plan.md") == "notes/2024 plan.md"


@pytest.fixture
def linked(tmp_path) -> Path:
    """A directory with one real file, links inside it and out of it (to ``/``, a file, a folder), and a link loop."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "real.txt").write_text("Inside the root.")
    (outside / "secret.txt").write_text("Outside the root.")
    (root / "inner-link.txt").symlink_to(root / "real.txt")
    (root / "secret-link.txt").symlink_to(outside / "secret.txt")
    (root / "sub" / "everything").symlink_to("/")
    (root / "sub" / "out-folder").symlink_to(outside, target_is_directory=True)
    (root / "loop.txt").symlink_to(root / "loop.txt")
    return root


@pytest.mark.parametrize("glob", ["**/*", "*", "sub/*/*", "sub/*/*.txt"])
def test_symlinks_out_of_the_directory_are_not_followed(linked, glob, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_memory.loaders"):
        try:
            docs = list(load_documents(linked, glob=glob))
        except EmptyDocumentError:
            docs = []
    texts = [d.text for d in docs]
    assert "Outside the root." not in texts
    assert all(Path(d.source).resolve().is_relative_to(linked.resolve()) for d in docs)
    if glob in ("**/*", "*"):
        assert sorted(d.doc_id for d in docs) == ["inner-link.txt", "real.txt"]  # a link inside the root is read
        assert "secret-link.txt: it is a symbolic link to" in caplog.text and "not followed" in caplog.text
    else:
        assert docs == [] and "out-folder/secret.txt" in caplog.text


def test_a_symlink_given_by_name_is_read(linked):
    [doc] = load_documents(linked / "secret-link.txt")  # named explicitly: the user chose its target
    assert doc.text == "Outside the root."
