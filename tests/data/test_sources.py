"""Reading documents from files, directories and built-in names."""

import json

import pytest

from gpt2tune.data.sources import read_documents
from gpt2tune.errors import UserError


def test_text_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\n\ntwo\n")
    assert read_documents(tmp_path / "a.txt") == ["one\nstill one", "two"]
    assert read_documents(tmp_path / "a.txt", doc_sep="line") == ["one", "still one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "id": 2}\n')
    assert read_documents(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "c.json").write_text(json.dumps([{"body": "p"}, {"body": "q"}]))
    assert read_documents(tmp_path / "c.json", text_field="body") == ["p", "q"]
    (tmp_path / "d.csv").write_text('id,body\n1,"hello, world"\n2,"multi\nline"\n')
    assert read_documents(tmp_path / "d.csv", text_field="body") == ["hello, world", "multi\nline"]
    docs = tmp_path / "dir"
    docs.mkdir()
    (docs / "2.txt").write_text("second\n\nstill second")
    (docs / "1.txt").write_text("first")
    assert read_documents(docs) == ["first", "second\n\nstill second"]


@pytest.mark.parametrize(
    "name, content, message, field",
    [
        ("empty.txt", "\n\n  \n", "holds no text", None),
        ("bad.jsonl", '{"text": "ok"}\n{"text": broken}\n', "line 2 is not valid JSON", None),
        (
            "field.jsonl",
            '{"body": "x"}\n',
            "no 'text' field.*choose one with text_field$",
            "text_field",
        ),
        ("col.csv", "a,b\n1,2\n", "no 'text' column.*choose one with text_field$", "text_field"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, name, content, message, field):
    """...and the option that fixes it, where one does."""
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message) as e:
        read_documents(tmp_path / name)
    assert e.value.field == field


def test_an_unknown_doc_sep_names_the_option(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UserError, match="unknown doc_sep 'para'; use one of: blank, line") as e:
        read_documents(tmp_path / "a.txt", doc_sep="para")
    assert e.value.field == "doc_sep"


def test_non_utf8_reports_line(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(UserError, match="line 3"):
        read_documents(tmp_path / "x.txt")
