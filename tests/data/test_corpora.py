"""The corpora (src/data/corpora.py): Shakespeare's plays, a package's sources, a text file, random tokens, and each
bad input's message."""

from __future__ import annotations

import pytest
import torch

from src.data import CharDataModule, shakespeare_text, strip_markdown
from src.errors import UserError

MARKDOWN = """# Hamlet

## ACT I

### SCENE I. Elsinore.

_Enter BERNARDO_

**BERNARDO**  
Who's there? \\[Aside]  
Long live the king!

**MARCELLUS & BERNARDO**  
Longer, longer.
"""


def test_strip_markdown():
    text = strip_markdown(MARKDOWN)
    assert text == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nEnter BERNARDO\n\n"
        "BERNARDO:\nWho's there? [Aside]\nLong live the king!\n\nMARCELLUS & BERNARDO:\nLonger, longer.\n"
    )


def test_shakespeare_corpus():
    text = shakespeare_text()
    assert 4_500_000 < len(text) < 5_500_000
    assert not set("*_#\\") & set(text)
    assert "HAMLET:\nTo be, or not to be" in text
    assert 60 < len(set(text)) < 100


def test_synthetic_matches_prototype():
    dm = CharDataModule(name="synthetic", seq_len=64)
    dm.setup()
    assert len(dm.vocab) == 64 and sum(len(v) for v in dm.splits.values()) == 50_000


def test_text_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world\n" * 200, encoding="utf-8")
    dm = CharDataModule(name="text_file", path=str(f), seq_len=16, batch_size=4)
    dm.setup()
    assert dm.vocab.itos == sorted(set("hello world\n"))
    assert dm.vocab.decode(dm.splits["train"][:11].tolist()) == "hello world"


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text(""), "is empty"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "not UTF-8"),
        (lambda p: p.write_text("short text"), "too short for seq_len"),
    ],
    ids=["missing", "empty", "not-utf8", "too-short"],
)
def test_bad_text_file(tmp_path, make, msg):
    p = tmp_path / "corpus.txt"
    make(p)
    with pytest.raises(UserError, match=msg):
        CharDataModule(name="text_file", path=str(p), seq_len=64).setup()


def test_text_file_needs_path():
    with pytest.raises(UserError, match="data.path="):
        CharDataModule(name="text_file").setup()


def fake_distribution(root, name: str, files: dict[str, str]) -> None:
    """An installed distribution ``name`` under ``root`` (add root to sys.path) holding ``files``."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in files))
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_python_source_reads_the_py_files_in_sorted_order(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "srcpkg", {"srcpkg/b.py": "def b():\n    return 2\n", "srcpkg/a.py": "A = 1\n",
                                           "srcpkg/notes.txt": "not code"})
    monkeypatch.syspath_prepend(str(tmp_path))
    texts = []
    for _ in range(2):
        dm = CharDataModule(name="python_source", package="srcpkg", seq_len=4, batch_size=1, val_fraction=0.2,
                            test_fraction=0.2)
        dm.setup()
        texts.append(dm.vocab.decode(torch.cat(list(dm.splits.values()))))
    assert texts[0] == texts[1] == "# srcpkg/a.py\nA = 1\n\n# srcpkg/b.py\ndef b():\n    return 2\n"


def test_python_source_bad_package(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "nocode", {"nocode/data.txt": "x"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="data.package=nocode has no .py files to read"):
        CharDataModule(name="python_source", package="nocode").setup()
    with pytest.raises(UserError, match="data.package=no_such_package_xyz: no installed package of that name"):
        CharDataModule(name="python_source", package="no_such_package_xyz").setup()
    # a module of Python itself is no distribution: `pip install math` is not the fix
    with pytest.raises(UserError, match="data.package=math is a module of Python's standard library") as e:
        CharDataModule(name="python_source", package="math").setup()
    assert "pip install" not in str(e.value)
