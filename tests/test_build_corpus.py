"""Fast unit tests of the corpus builder's parsing and cleaning helpers (no network)."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from data import build_corpus as bc

# ---- whitespace, lines, paragraphs -------------------------------------------------------


def test_normalize_whitespace_drops_junk_lines_and_collapses_blanks() -> None:
    text = "Title\u00a0 here \r\n\r\n\r\n\r\n* * *\n  body\ttext  \n12 34\nWink, 401, 872.\n"
    assert bc.normalize_whitespace(text) == "Title here\n\nbody text"


def test_unwrap_paragraphs_joins_prose_keeps_verse_and_lists() -> None:
    prose = ("It is a truth universally acknowledged, that a single man in\n"
             "possession of a good fortune, must be in want of a wife.")
    verse = ("Shall I compare thee to a summer's day?\n"
             "Thou art more lovely and more temperate:\n"
             "Rough winds do shake the darling buds of May,\n"
             "And summer's lease hath all too short a date:")
    listing = ("The driver provides three basic functions that are quite useful:\n"
               "- Gathers the comprehensive error information.\n"
               "- Reports error to the users.")
    out = bc.unwrap_paragraphs("\n\n".join([prose, verse, listing]))
    paras = out.split("\n\n")
    assert paras[0] == prose.replace("\n", " ")
    assert paras[1] == verse
    assert paras[2] == listing


def test_strip_gutenberg_removes_header_footer_and_license_lines() -> None:
    text = ("The Project Gutenberg EBook of Hamlet\nRelease Date: 1999\n"
            "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "HAMLET\n\nTo be, or not to be.\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "Section 1. General Terms of Use\n")
    out = bc.strip_gutenberg(text)
    assert "To be, or not to be." in out
    assert "Gutenberg" not in out and "Terms of Use" not in out and "Release Date" not in out
    assert bc.strip_gutenberg("No header at all.\n") == "No header at all.\n"


def test_split_long_cuts_at_paragraphs_then_sentences() -> None:
    paras = [" ".join(f"w{i}" for i in range(30)) + "." for _ in range(5)]
    chunks = bc.split_long("\n\n".join(paras), max_words=70)
    assert [len(c.split()) for c in chunks] == [60, 60, 30]
    assert all("\n\n" in c for c in chunks[:2])
    one_para = " ".join(f"Sentence number {i} is here." for i in range(40))  # 200 words
    chunks = bc.split_long(one_para, max_words=50)
    assert all(len(c.split()) <= 50 for c in chunks)
    assert " ".join(chunks) == one_para
    assert bc.split_long("short text", max_words=50) == ["short text"]


# ---- dedup, caps, split -------------------------------------------------------------------


def test_deduper_drops_repeated_documents_and_long_paragraphs() -> None:
    d = bc.Deduper(para_min_words=5)
    long_para = "this paragraph is long enough to count"
    first = d.paragraphs(f"Intro.\n\n{long_para}\n\nShort one.")
    assert first == f"Intro.\n\n{long_para}\n\nShort one."
    second = d.paragraphs(f"Other.\n\n{long_para}\n\nShort one.")
    assert second == "Other.\n\nShort one."  # short paragraphs are never dropped
    assert d.is_new("doc a") and not d.is_new("doc a") and d.is_new("doc b")
    assert d.dropped_docs == 1 and d.dropped_paras == 1


def test_apply_cap_is_deterministic_keeps_order_and_reaches_cap() -> None:
    docs = [f"document {i} " + "word " * (i % 7 + 3) for i in range(200)]
    a = bc.apply_cap(docs, 300)
    assert a == bc.apply_cap(list(docs), 300)
    assert 300 <= sum(len(d.split()) for d in a) < 300 + 12
    assert [docs.index(d) for d in a] == sorted(docs.index(d) for d in a)
    assert bc.apply_cap(docs, None) is docs


def test_validation_split_is_stable_and_near_fraction() -> None:
    docs = [f"doc number {i}" for i in range(20000)]
    val = [d for d in docs if bc.is_validation(d, 0.02)]
    assert val == [d for d in docs if bc.is_validation(d, 0.02)]
    assert 0.015 < len(val) / len(docs) < 0.025
    assert not any(bc.is_validation(d, 0.0) for d in docs[:100])


# ---- formats: SWORD, OSIS, dictd, GCIDE, WordNet, R ----------------------------------------


def _ztext(verses_by_block: list[list[bytes]]) -> tuple[bytes, bytes, bytes]:
    """Build a zText testament: .bzs block index, .bzz zlib blocks, .bzv verse index."""
    bzs, bzz, bzv = b"", b"", b""
    for block_no, verses in enumerate(verses_by_block):
        raw = b"".join(verses)
        comp = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(comp), len(raw))
        bzz += comp
        offset = 0
        for v in verses:
            bzv += struct.pack("<IIH", block_no, offset, len(v))
            offset += len(v)
    return bzs, bzz, bzv


def test_read_ztext_and_osis_chapters() -> None:
    book = [
        b'<title type="main">Genesis</title><div sID="g1" type="x-p"/>'
        b'<chapter n="1" osisID="Gen.1" sID="Gen.1"/><w lemma="strong:H7225">In</w> the beginning'
        b'<note placement="foot">Or, "heads"</note>.',
        b"God saw the light.<chapter eID=\"Gen.1\"/>",
        b'<chapter n="2" osisID="Gen.2" sID="Gen.2"/><div type="x-p" sID="g2"/>The end.',
    ]
    bzs, bzz, bzv = _ztext([[b"<milestone/>"], book])
    books = bc.read_ztext(bzs, bzz, bzv)
    assert len(books) == 2
    assert "</note>. God saw" in books[1]  # verses joined with a space
    chapters = [bc.normalize_whitespace(c) for c in bc.osis_chapters(books[1])]
    assert chapters == ["", "In the beginning. God saw the light.", "The end."]
    # without the verse index the block comes back whole (no separators added)
    whole = bc.read_ztext(bzs, bzz)[1]
    assert whole == b"".join(book).decode()


def test_dictd_entries_and_cleaning() -> None:
    entries = [
        ("00-database-short", "The Test Dictionary\n"),
        ("Lapidist", 'Lapidist \\Lap"i*dist\\, n. [L. lapis, -idis, a stone.]\n'
                     "   A lapidary. --Ray.\n   [1913 Webster]\n\n"),
        ("Lapis", "Lapis \\La\"pis\\, n.; pl. {Lapides}. [L.]\n   A stone.\n"
                  "   [1913 Webster]\n"),
    ]
    data, index = "", ""
    for head, body in entries:
        offset = len(data.encode())
        data += body
        length = len(body.encode())
        enc = "".join(bc._B64[(offset >> s) & 63] for s in (12, 6, 0))
        enc_len = "".join(bc._B64[(length >> s) & 63] for s in (12, 6, 0))
        index += f"{head}\t{enc}\t{enc_len}\n"
        if head == "Lapis":
            index += f"stone (alias)\t{enc}\t{enc_len}\n"  # a second headword, same entry
    assert bc.dictd_number("BA") == 64
    got = list(bc.dictd_entries(gzip.decompress(gzip.compress(data.encode())), index))
    assert [h for h, _ in got] == ["Lapidist", "Lapis"]
    cleaned = [bc.clean_gcide_entry(body) for _, body in got]
    assert cleaned == ["Lapidist, n.\nA lapidary.", "Lapis, n.; pl. Lapides.\nA stone."]


def test_clean_dictd_entry_foldoc_style() -> None:
    entry = ("Leo\n\n   1. <language> A general-purpose {systems language},\n"
             "   syntactically like {Pascal} and {Y}.\n\n   [{Jargon File}]\n\n   (1996-02-06)\n")
    assert bc.clean_dictd_entry(entry) == (
        "Leo\n\n1. A general-purpose systems language,\nsyntactically like Pascal and Y.")


def test_wordnet_synsets() -> None:
    data = ("  1 This software and database is being provided\n"
            "00002137 03 n 02 abstraction 0 abstract_entity 0 010 @ 00001740 n 0000 | a general "
            "concept formed by extracting common features  \n"
            "00001740 00 a 01 able(a) 0 001 ! 00002098 a 0101 | having the necessary means; "
            "\"able to swim\"  \n")
    assert list(bc.wordnet_synsets(data)) == [
        "abstraction, abstract entity: a general concept formed by extracting common features",
        'able: having the necessary means; "able to swim"',
    ]


def _r_int(v: int) -> bytes:
    return struct.pack(">i", v)


def _r_char(s: str) -> bytes:
    b = s.encode()
    return _r_int(9 | (1 << 15)) + _r_int(len(b)) + b  # CHARSXP, UTF-8 flag


def _r_strs(values: list[str]) -> bytes:
    return _r_int(16) + _r_int(len(values)) + b"".join(_r_char(v) for v in values)


def _r_header() -> bytes:
    return b"X\n" + _r_int(3) + _r_int(0x040201) + _r_int(0x030500) + _r_int(5) + b"UTF-8"


def _r_named_list(items: dict[str, bytes]) -> bytes:
    """VECSXP with a names attribute (a pairlist: tag symbol 'names' -> STRSXP)."""
    body = _r_int(19 | (1 << 9)) + _r_int(len(items)) + b"".join(items.values())
    attr = _r_int(2 | (1 << 10)) + _r_int(1) + _r_char("names") + _r_strs(list(items))
    return body + attr + _r_int(254)


def test_read_r_lazyload_character_vectors() -> None:
    books = {"emma": ["EMMA", "", "By Jane Austen"], "persuasion": ["PERSUASION", "Chapter 1"]}
    rdb, variables = b"", {}
    for name, lines in books.items():
        comp = zlib.compress(_r_header() + _r_strs(lines))
        record = struct.pack(">I", len(comp)) + comp
        variables[name] = _r_int(13) + _r_int(2) + _r_int(len(rdb)) + _r_int(len(record))
        rdb += record
    index = _r_header() + _r_named_list({
        "variables": _r_named_list(variables),
        "references": _r_int(19) + _r_int(0),
        "compressed": _r_int(10) + _r_int(1) + _r_int(1),
    })
    assert bc.read_r_lazyload(gzip.compress(index), rdb) == books
    with pytest.raises(ValueError):
        bc.RReader(b"A\n")


# ---- markup: HTML, reStructuredText, MediaWiki ----------------------------------------------


def test_html_to_text_skips_navigation_and_code() -> None:
    page = ("<html><head><title>T</title><style>p{}</style></head><body>"
            "<div class='navheader'><table><tr><td>Prev</td><td>Next</td></tr></table></div>"
            "<h1>Chapter&nbsp;1</h1><p>Some <code>inline</code>\n   text &amp; more.</p>"
            "<pre class='programlisting'>SELECT 1;</pre><br/><div class='para'>Second.</div>"
            "<div class='navfooter'>Home</div></body></html>")
    out = bc.normalize_whitespace(bc.html_to_text(page))
    assert out == "Chapter 1\n\nSome inline text & more.\n\nSecond."


def test_rst_to_text_keeps_prose_drops_code_and_directives() -> None:
    rst = """:mod:`functools` --- Higher-order functions
============================================

.. module:: functools
   :synopsis: Higher-order functions.

.. _label:

The :mod:`functools` module is for *higher-order* functions, see
:func:`~functools.lru_cache` and `the docs <https://example.org>`_. For example::

    @cache
    def f(n): ...

.. function:: cache(user_function)

   Simple lightweight ``unbounded`` function cache.

   >>> f(10)
   3628800

   .. versionadded:: 3.9

.. code-block:: python

   print("hidden")

- item one
  continues
- item two
"""
    out = bc.rst_to_text(rst)
    assert out.split("\n\n") == [
        "functools --- Higher-order functions",
        "The functools module is for higher-order functions, see lru_cache and the docs. "
        "For example:",
        "cache(user_function)",
        "Simple lightweight unbounded function cache.",
        "New in version 3.9.",
        "- item one continues\n- item two",
    ]


def test_wiki_to_text_removes_markup() -> None:
    wikitext = """{{Infobox person|name=Ada {{nowrap|Lovelace}}}}
'''Ada Lovelace''' (10 December 1815 – 1852)<ref name="a">Cite</ref> was an
[[England|English]] [[mathematician]].<ref>Another {{cite}}</ref>
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]]]]
{| class="wikitable"
| cell || cell
|}
== Life ==
* She worked with [http://example.org Charles Babbage]<!-- comment -->.
== References ==
{{reflist}}
* A reference.
[[Category:Mathematicians]]
[[fr:Ada Lovelace]]
"""
    out = bc.normalize_whitespace(bc.wiki_to_text(wikitext))
    assert out == ("Ada Lovelace (10 December 1815 – 1852) was an\nEnglish mathematician.\n\n"
                   "Life\n\nShe worked with Charles Babbage.")


# ---- CLI and a small end-to-end build ------------------------------------------------------


def test_parse_caps_overrides() -> None:
    caps = bc.parse_caps(["gcide=1.5m", "bible_web=none", "austen=250k", "devil=1_000"])
    assert caps["gcide"] == 1_500_000 and caps["bible_web"] is None
    assert caps["austen"] == 250_000 and caps["devil"] == 1000
    assert caps["shakespeare_milton"] == bc.DEFAULT_CAPS["shakespeare_milton"]
    with pytest.raises(SystemExit):
        bc.parse_caps(["nosuchsource=5"])


def test_every_source_has_license_and_penn_treebank_is_excluded() -> None:
    assert all(s.license for s in bc.SOURCES.values())
    assert not any("treebank" in p.name for s in bc.SOURCES.values() for p in s.packages)
    assert set(bc.DEFAULT_CAPS) <= set(bc.SOURCES)


def test_build_is_deterministic_and_skips_broken_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    for i in range(40):
        (root / f"doc{i:02d}.txt").write_text(
            f"Document {i} says hello.\n\n" + " ".join(["word"] * 30) + f" end {i}.\n")
    (root / "dup.txt").write_text((root / "doc00.txt").read_text())

    def toy_extract(files: bc.SourceFiles):
        for path in files.glob("*.txt"):
            yield path.read_text()

    def fake_fetch(pkg: bc.Package, cache: Path) -> bc.FetchedPackage:
        if pkg.name == "missing":
            raise bc.FetchError("package not found")
        return bc.FetchedPackage(pkg, "1.0", "toy-1.0.whl", root)

    sources = {
        "toy": bc.Source("toy", (bc.Package("pip", "toy", "1.0"),), toy_extract, "MIT", "test"),
        "broken": bc.Source("broken", (bc.Package("pip", "missing", "1"),), toy_extract,
                            "MIT", "test"),
    }
    monkeypatch.setattr(bc, "SOURCES", sources)
    monkeypatch.setattr(bc, "fetch", fake_fetch)
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        assert bc.main(["--out", str(out), "--cache", str(tmp_path / "cache"),
                        "--val-fraction", "0.25", "--cap", "toy=none"]) == 0
        outputs.append([(out / n).read_bytes() for n in ("train.jsonl", "val.jsonl",
                                                         "manifest.json")])
    assert outputs[0] == outputs[1]
    manifest = json.loads(outputs[0][2])
    toy = manifest["sources"]["toy"]
    assert toy["documents_train"] + toy["documents_val"] == 40  # the duplicate is dropped
    assert toy["documents_val"] > 0 and toy["words_val"] > 0
    assert toy["packages"] == [{"manager": "pip", "name": "toy", "version": "1.0",
                                "archive": "toy-1.0.whl"}]
    assert toy["files"][0]["files"] == 41
    assert "broken" in manifest["skipped"]
    rows = [json.loads(line) for line in outputs[0][0].decode().splitlines()]
    assert all(set(r) == {"text", "source"} and r["source"] == "toy" for r in rows)


def test_caps_keep_manuals_and_dictionaries_a_minority() -> None:
    """Issue 22: manuals (4.2M words) and glosses (3.7M) gave the model suffix and genus/tropical
    senses; together they are now capped to at most 2.5M of the ~10M words."""
    kinds = ("technical", "dictionary", "definitions")
    names = {n for n, s in bc.SOURCES.items() if s.default and s.kind.startswith(kinds)}
    assert {"python_docs", "linux_docs", "gcide", "wordnet", "foldoc"} <= names
    small = {"debian_handbook", "devil"}  # 160k and 61k words in full: no cap needed
    assert all(bc.DEFAULT_CAPS.get(n) for n in names - small)
    assert sum(bc.DEFAULT_CAPS[n] for n in names - small) + 160_000 + 61_000 <= 2_500_000
    assert "anarchist_faq" in bc.SOURCES and bc.SOURCES["anarchist_faq"].default
