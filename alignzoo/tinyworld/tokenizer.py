"""A CLIP BPE tokenizer over the tiny world's vocabulary.

``vocab.json`` holds CLIP's byte-level alphabet (each of the 256 byte symbols, alone and with
the end-of-word marker ``</w>``), the special tokens and one token per intermediate merge;
``merges.txt`` holds merges that build every grammar word into one whole-word token
(``red</w>``). Any other text still tokenizes (into characters), so nothing is ever mapped to
the unknown token. The merges are chosen by simulating BPE: for each word, the merge of its
first two current pieces is appended (with the lowest priority) until the word is one token;
appended merges never change how earlier words split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignzoo.tinyworld.grammar import vocabulary

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 16
EOW = "</w>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the adjacent pair with the lowest rank."""
    word = list(symbols)
    while len(word) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        a, b = word[i], word[i + 1]
        merged, j = [], 0
        while j < len(word):
            if j < len(word) - 1 and word[j] == a and word[j + 1] == b:
                merged.append(a + b)
                j += 2
            else:
                merged.append(word[j])
                j += 1
        word = merged
    return word


def _word_symbols(word: str) -> list[str]:
    b2u = _bytes_to_unicode()
    chars = [b2u[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + EOW
    return chars


def build_vocab_and_merges(words: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    words = sorted(set(words if words is not None else vocabulary()))
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + EOW for c in alphabet]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        while True:
            pieces = _bpe(_word_symbols(w), ranks)
            if len(pieces) == 1:
                break
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_tokenizer_files(folder: str | os.PathLike, words: list[str] | None = None) -> Path:
    """Writes vocab.json and merges.txt (merges for ``words``, default the first world's
    vocabulary) into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 tiny-world CLIP BPE"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_tokenizer(folder: str | os.PathLike | None = None, words: list[str] | None = None):
    """The tiny world's ``CLIPTokenizer`` (model_max_length 16, pad = eos as in SD 1.x).

    With ``folder`` the vocab/merges files are written there first (and the tokenizer is loaded
    from them, exercising the file path); otherwise it is built in memory.
    """
    from transformers import CLIPTokenizer

    if folder is not None:
        folder = write_tokenizer_files(folder, words)
        tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=MODEL_MAX_LENGTH)
    else:
        vocab, merges = build_vocab_and_merges()
        tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
    tok.model_max_length = MODEL_MAX_LENGTH
    return tok
