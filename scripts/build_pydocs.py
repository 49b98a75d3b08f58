"""Build the packaged cross-domain text: the Python standard library's own documentation.

Usage: python scripts/build_pydocs.py

Technical English about software, a domain clearly unlike the Brown corpus (1961 American
prose). Documents are the language reference topics of ``pydoc_data.topics`` (the text
``help()`` shows) and, per module of the standard library, the module, class and function
docstrings in source order, each paragraph once (tests, demos, IDLE and the vendored packages left out). Sorted by
name, every fifth document goes to the evaluation part, the rest to calibration. Writes
src/duogpt/data/pydocs_{calib,eval}.txt.xz (documents separated by blank lines) and the
Python license beside them (the text is derived from Python, PSF License). The files shipped
were built from CPython 3.11.7; another version gives slightly different text.
"""

from __future__ import annotations

import ast
import inspect
import shutil
import sys
import sysconfig
from pathlib import Path

from build_brown import OUT_DIR, write_parts  # the same file layout as the default text

SKIP = ("test", "tests", "idlelib", "turtledemo", "site-packages", "pydoc_data", "encodings", "__phello__", "ensurepip")
MIN_CHARS = 80  # shorter docstrings are mostly one-line signatures


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one source file, in source order."""
    tree = ast.parse(source)
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    out = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= MIN_CHARS:
            out.append(doc)
    return out


def module_documents(stdlib: Path) -> dict[str, str]:
    docs = {}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in SKIP for part in rel.parts) or rel.name.startswith("_sysconfigdata"):
            continue
        parts = docstrings(path.read_text(encoding="utf-8", errors="replace"))
        if parts:
            docs["module " + ".".join(rel.with_suffix("").parts)] = "\n\n".join(parts)
    return docs


def topic_documents() -> dict[str, str]:
    from pydoc_data.topics import topics

    return {f"topic {name}": inspect.cleandoc(text) for name, text in topics.items()}


def without_repeats(documents: dict[str, str]) -> dict[str, str]:
    """Drop every paragraph seen before (in name order): the same docstring is often copied
    between modules (io and _pyio, a class and its subclasses), and calibration and evaluation
    text must not share any."""
    seen, out = set(), {}
    for name in sorted(documents):
        kept = []
        for paragraph in documents[name].split("\n\n"):
            key = paragraph.strip()
            if key and key not in seen:
                seen.add(key)
                kept.append(paragraph)
        if kept:
            out[name] = "\n\n".join(kept)
    return out


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents = without_repeats({**topic_documents(), **module_documents(stdlib)})
    calib, evaluation = [], []
    for i, name in enumerate(sorted(documents)):
        (evaluation if i % 5 == 4 else calib).append(documents[name])
    write_parts("pydocs", calib, evaluation)
    shutil.copyfile(stdlib / "LICENSE.txt", OUT_DIR / "pydocs_LICENSE.txt")
    print(f"built from Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
