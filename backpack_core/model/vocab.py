"""Words and token ids: the one way every tool turns what a user typed into tokens.

A word is text in its in-text form (" science", with its leading space) or a token id (an int).
`resolve_word` says how the tokenizer splits it, and how the other leading-space form splits;
`single_token_id` insists on one token and refuses with a message naming the pieces;
`token_text` shows a token (byte pieces as `<0xE2>`). Nothing is silently cut to its first piece.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backpack_core.common.limits import LimitError, check_word
from backpack_core.model.tokenizer import token_bytes

if TYPE_CHECKING:  # pragma: no cover
    from backpack_core.model.tokenizer import Tokenizer


class WordError(ValueError):
    """A word (or token id) could not be turned into the token(s) asked for; says why."""


class WordLimitError(WordError, LimitError):
    """A word longer than backpack_core.common.limits.MAX_WORD_CHARS."""


# ----------------------------------------------------------------------------------------------
# Words and tokens
# ----------------------------------------------------------------------------------------------

def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The text of one token as it reads in a text (' science' for the byte-level 'Ġscience').

    A token that holds only part of a UTF-8 character reads as its bytes, '<0xE2>', not as the
    '�' that decoding it alone gives (`tokenizer.token_bytes`)."""
    return token_bytes(tokenizer, token_id).decode("utf-8", errors="backpack-hex-bytes")


@dataclass
class WordTokens:
    """How the tokenizer reads a word: its token ids and the text of each piece.

    `alternatives` holds the other spelling with/without a leading space when it tokenizes
    differently (" science", with the space, is how the word appears inside a text).
    """

    query: str | int
    token_ids: list[int]
    tokens: list[str]
    alternatives: list[WordTokens] = field(default_factory=list)

    @property
    def is_single(self) -> bool:
        return len(self.token_ids) == 1

    def describe(self) -> str:
        """One line for people: which token(s) the word became."""
        if isinstance(self.query, int):
            text = f"token id {self.query} is {self.tokens[0]!r}"
        elif self.is_single:
            text = f"{self.query!r} is one token, {self.tokens[0]!r} (id {self.token_ids[0]})"
        else:
            pieces = " + ".join(f"{t!r} ({i})" for t, i in zip(self.tokens, self.token_ids))
            text = f"{self.query!r} splits into {len(self.token_ids)} tokens: {pieces}"
        for alt in self.alternatives:
            if alt.is_single:
                text += (f"; the form {alt.query!r} is a different token, {alt.tokens[0]!r} "
                         f"(id {alt.token_ids[0]})")
            else:
                text += f"; the form {alt.query!r} splits into {len(alt.token_ids)} tokens"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "token_ids": list(self.token_ids), "tokens": list(self.tokens),
                "single_token": self.is_single,
                "alternatives": [alt.to_dict() for alt in self.alternatives]}


def _check_id(token_id: int, vocab_size: int | None, tokenizer: Tokenizer | None) -> None:
    limit = vocab_size if vocab_size is not None else (len(tokenizer) if tokenizer else None)
    if token_id < 0 or (limit is not None and token_id >= limit):
        raise WordError(f"token id {token_id} is out of range: the vocabulary has ids 0..{limit - 1}"
                        if limit is not None else f"token id {token_id} must be >= 0")


def resolve_word(tokenizer: Tokenizer | None, word: str | int, vocab_size: int | None = None
                 ) -> WordTokens:
    """A word (text) or a token id -> its token(s), with the other leading-space form if it
    tokenizes differently. An int (or a torch/numpy integer) is taken as a token id."""
    if isinstance(word, bool):
        raise WordError(f"expected a word or a token id, got {word!r}")
    if not isinstance(word, str):
        try:
            token_id = operator.index(word)  # ints, numpy / torch integer scalars
        except TypeError:
            raise WordError(f"expected a word (text) or a token id, got {word!r}") from None
        _check_id(token_id, vocab_size, tokenizer)
        tokens = [token_text(tokenizer, token_id)] if tokenizer is not None else [f"<{token_id}>"]
        return WordTokens(token_id, [token_id], tokens)
    if tokenizer is None:
        raise WordError(f"the word {word!r} needs a tokenizer; give a token id instead")
    if word == "":
        raise WordError("the word is empty")
    check_word(word, WordLimitError)  # a 100k-character "word" would allocate gigabytes downstream
    ids = tokenizer.encode(word)
    for token_id in ids:
        _check_id(token_id, vocab_size, None)
    result = WordTokens(word, list(ids), [token_text(tokenizer, i) for i in ids])
    other = word.lstrip(" ") if word.startswith(" ") else " " + word
    if other and other != word and not other.isspace():
        other_ids = tokenizer.encode(other)
        if other_ids != ids:
            result.alternatives.append(
                WordTokens(other, list(other_ids), [token_text(tokenizer, i) for i in other_ids]))
    return result


def single_token_id(tokenizer: Tokenizer | None, word: str | int, vocab_size: int | None = None,
                    role: str = "word") -> int:
    """The one token id of `word`, or WordError naming the pieces it splits into."""
    resolved = resolve_word(tokenizer, word, vocab_size)
    if resolved.is_single:
        return resolved.token_ids[0]
    pieces = " + ".join(repr(t) for t in resolved.tokens)
    hint = ""
    single_alts = [alt for alt in resolved.alternatives if alt.is_single]
    if single_alts:
        hint = f"; {single_alts[0].query!r} is a single token (id {single_alts[0].token_ids[0]})"
    raise WordError(f"{role} {word!r} is {len(resolved.token_ids)} tokens ({pieces}), but one "
                    f"token is needed: give one piece or a token id (#123){hint}")


def parse_word(text: str | int, tokenizer: Tokenizer | None = None, vocab_size: int | None = None
               ) -> str | int:
    """What a user typed in a word box -> a word (text) or a token id, one rule for every box:

    - `#123` -> token id 123 (an int is taken as a token id as it is);
    - quoted, `' bank'` or `"bank"` -> the text inside the quotes, exactly;
    - typed with its leading space, ` bank` -> as typed;
    - bare, `bank` -> the in-text form `' bank'` when that is one token of the vocabulary (how
      the word reads inside a text), else `bank` when that is one token, else `' bank'` (a word
      of several tokens, split as inside a text).

    WordError for an empty box. Surrounding whitespace of a bare word is ignored."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if not stripped:
        raise WordError("the word is empty: type a word (bank), a form in quotes (' bank') or a "
                        "token id (#123)")
    if stripped.startswith("#") and stripped[1:].isdigit():
        return int(stripped[1:])
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        inner = stripped[1:-1]
        if not inner:
            raise WordError(f"the word {stripped} is empty inside its quotes")
        return inner
    if text.startswith(" ") and not text.startswith("  "):
        return text.rstrip()
    if tokenizer is None:
        return " " + stripped
    for form in (" " + stripped, stripped):
        try:
            if resolve_word(tokenizer, form, vocab_size).is_single:
                return form
        except WordError:
            continue
    return " " + stripped
