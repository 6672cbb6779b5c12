"""Tokenizer and vocabulary for captions (no NLTK data downloads needed)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from nltk.tokenize import TreebankWordTokenizer

_TOKENIZER = TreebankWordTokenizer()
_WORD = re.compile(r"[^\W_]+")

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


def tokenize(text: str) -> list[str]:
    """Lowercase Treebank tokens, keeping only alphanumeric ones ("A dog's ball." -> a dog ball)."""
    out: list[str] = []
    for tok in _TOKENIZER.tokenize(text.lower()):
        if tok == "n't":
            out.append("not")
        elif not tok.startswith("'"):  # drop clitics ('s, 're) and quotes
            out.extend(_WORD.findall(tok))  # "black-and-white" -> black and white
    return out


class Vocab:
    """Word <-> id map with ``<pad>``=0, ``<start>``=1, ``<end>``=2, ``<unk>``=3."""

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str] = ()) -> None:
        self.itos: list[str] = list(SPECIALS)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        for w in words:
            if w not in self.stoi:
                self.stoi[w] = len(self.itos)
                self.itos.append(w)

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_count: int = 5) -> "Vocab":
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, tokens: Iterable[str], add_special: bool = True) -> list[int]:
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        return [self.start_id, *ids, self.end_id] if add_special else ids

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first ``<end>``, specials skipped."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id) or not 0 <= i < len(self.itos):
                continue
            words.append(self.itos[i])
        return words

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.decode_tokens(ids))

    def to_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        itos = list(d["itos"])
        if itos[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError("vocabulary does not start with <pad>, <start>, <end>, <unk>")
        return cls(itos[len(SPECIALS):])

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"
