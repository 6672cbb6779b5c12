"""Caption preprocessing (cleaning, vocabulary, padded id arrays) and length-bucketed batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from streamcap.caption.vocab import Vocab, tokenize

SWAP_ON_FLIP = {"left": "right", "right": "left"}


def clean(caption: str) -> list[str]:
    """Lowercase alphanumeric tokens (the tokenizer the model and the metrics share)."""
    return tokenize(caption)


@dataclass
class EncodedCaptions:
    """Captions as a padded id array: row i belongs to image ``image_index[i]``."""

    ids: np.ndarray  # (N, max_len + 2) int64: <start> words... <end> <pad>...
    lengths: np.ndarray  # (N,) tokens incl. <start> and <end>
    image_index: np.ndarray  # (N,) row of the image in the split's image list


def encode_captions(token_lists_per_image: Sequence[Sequence[list[str]]], vocab: Vocab,
                    max_len: int = 20) -> EncodedCaptions:
    rows, lengths, owners = [], [], []
    for i, caps in enumerate(token_lists_per_image):
        for tokens in caps:
            if not tokens:
                continue
            ids = vocab.encode(tokens[:max_len])
            rows.append(ids)
            lengths.append(len(ids))
            owners.append(i)
    width = max_len + 2
    arr = np.full((len(rows), width), vocab.pad_id, dtype=np.int64)
    for r, ids in enumerate(rows):
        arr[r, :len(ids)] = ids
    return EncodedCaptions(arr, np.asarray(lengths, dtype=np.int64), np.asarray(owners, dtype=np.int64))


def flip_swap_table(vocab: Vocab) -> np.ndarray:
    """id -> id with 'left' and 'right' exchanged (captions of horizontally flipped photos)."""
    table = np.arange(len(vocab), dtype=np.int64)
    for a, b in SWAP_ON_FLIP.items():
        if a in vocab and b in vocab:
            table[vocab.stoi[a]] = vocab.stoi[b]
    return table


def epoch_batches(n: int, lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  bucket: int = 50) -> list[np.ndarray]:
    """A seeded permutation cut into batches of similar caption length (less padding).

    Deterministic in (seed, epoch), so a resumed run can skip the batches already done.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    chunk = batch_size * bucket
    batches = []
    for s in range(0, n, chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
