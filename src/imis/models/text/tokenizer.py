"""CLIP byte-level BPE tokenizer (the ``bpe_simple_vocab_16e6`` vocabulary of OpenAI CLIP / IMIS-Net).

Pipeline for one string:

1. **Cleaning** (no ``ftfy``): HTML entities are unescaped twice (``&amp;amp;`` -> ``&``), the text is
   NFC-normalised, every run of whitespace becomes one space, the ends are stripped, and it is
   lower-cased. OpenAI's reference additionally runs ``ftfy.fix_text`` (mojibake repair); for
   well-formed text, as in every prompt template, the result is identical. HF's fast CLIP tokenizer
   does NFC + whitespace + lower-case and no HTML unescaping.
2. **Pre-tokenisation** with CLIP's regex: the two special-token strings, English contractions
   (``'s 't 're 've 'm 'll 'd``), runs of letters, single digits, and runs of other non-space symbols.
3. **Byte-level BPE**: each piece's UTF-8 bytes are mapped to printable stand-in characters, the last
   one gets the ``</w>`` word-end marker, and the ranked merges are applied lowest rank first.
4. **Specials and length**: ``<|startoftext|>`` (49406) first, ``<|endoftext|>`` (49407) last, at most
   ``context_length`` (77) ids; longer texts keep their first 75 tokens, then the end token.

Batches are padded (``pad_id``, default 0 as in OpenAI CLIP/open_clip; HF's
``openai/clip-vit-base-patch32`` pads with 49407) and come with an attention mask. The pooled CLIP
output reads the first end token, which the causal mask keeps independent of any padding value.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import regex
import torch

from imis.errors import ModelNotAvailableError
from imis.models.text.batch import Padding, pad_batch

__all__ = ["CLIPTokenizer", "locate_bpe_vocab", "START_ID", "END_ID", "VOCAB_FILENAME"]

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
START_ID = 49406
END_ID = 49407
CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses (the file has more lines)
_VOCAB_ENV = "IMIS_CLIP_BPE"
# Installed packages known to ship the vocabulary at <package dir>/<VOCAB_FILENAME>.
_PACKAGES = ("open_clip", "clip")

_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def locate_bpe_vocab(path: str | os.PathLike | None = None) -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz``.

    Looks at ``path`` if given, else ``$IMIS_CLIP_BPE``, else inside installed packages that ship it
    (``open_clip``, ``clip``), found without importing them. Raises ModelNotAvailableError when absent.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ModelNotAvailableError(f"{p}: CLIP BPE vocabulary file not found")
        return p
    env = os.environ.get(_VOCAB_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise ModelNotAvailableError(f"{p} (from ${_VOCAB_ENV}): CLIP BPE vocabulary file not found")
        return p
    for name in _PACKAGES:
        try:
            spec = importlib.util.find_spec(name)  # top-level lookup: does not import the package
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec is not None else []:
            candidate = Path(loc) / VOCAB_FILENAME
            if candidate.is_file():
                return candidate
    raise ModelNotAvailableError(
        f"CLIP BPE vocabulary {VOCAB_FILENAME} not found: install it with "
        f"`pip install --no-deps open-clip-torch` (only its data file is used), or pass its path "
        f"(CLIPTokenizer(vocab_path=...) or ${_VOCAB_ENV})"
    )


def _printable_bytes() -> list[int]:
    """Byte values that are printable Latin-1 characters, in increasing order (188 of them)."""
    return [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]


def _byte_symbols() -> list[str]:
    """The printable character standing for each byte value 0..255 (GPT-2/CLIP byte-level convention).

    Bytes that are printable Latin-1 characters stand for themselves; the others get the code points
    256, 257, ... in increasing byte order.
    """
    keep = set(_printable_bytes())
    symbols = []
    extra = 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _base_symbols() -> list[str]:
    """The 256 single-byte symbols in vocabulary order: printable bytes first, then the rest."""
    symbols = _byte_symbols()
    printable = _printable_bytes()
    keep = set(printable)
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in keep]


@lru_cache(maxsize=4)
def _load_tables(path: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """(token -> id, merge pair -> rank) for a vocabulary file; cached per path."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ModelNotAvailableError(f"{path}: not a CLIP BPE vocabulary ({len(merges)} merge lines)")
    symbols = _base_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    ranks = {m: i for i, m in enumerate(merges)}
    return vocab, ranks


def clean_text(text: str) -> str:
    """HTML-unescape (twice), NFC-normalise, collapse whitespace, strip and lower-case."""
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    return _WHITESPACE.sub(" ", text).strip().lower()


class CLIPTokenizer:
    """CLIP BPE tokenizer: ``encode`` gives ``[49406, ..., 49407]``, ``__call__`` a padded batch.

    Args:
        vocab_path: ``bpe_simple_vocab_16e6.txt.gz``; found automatically (see :func:`locate_bpe_vocab`).
        context_length: maximum ids per text including both special tokens (77 for CLIP).
    """

    start_id = START_ID
    end_id = END_ID

    def __init__(
        self, vocab_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH
    ) -> None:
        if context_length < 2:
            raise ValueError("context_length must leave room for the start and end tokens")
        self.vocab_path = locate_bpe_vocab(vocab_path)
        self.context_length = context_length
        self.encoder, self._ranks = _load_tables(str(self.vocab_path))
        self.decoder = {i: t for t, i in self.encoder.items()}
        self._byte_to_symbol = _byte_symbols()
        self._symbol_to_byte = {s: b for b, s in enumerate(self._byte_to_symbol)}
        self._cache: dict[str, list[str]] = {START_TOKEN: [START_TOKEN], END_TOKEN: [END_TOKEN]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, piece: str) -> list[str]:
        """Merge the symbols of one pre-tokenised piece (already byte-mapped) into vocabulary tokens."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        ranks = self._ranks
        while len(word) > 1:
            best_rank = None
            best = None
            for pair in zip(word[:-1], word[1:], strict=True):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 100_000:
            self._cache[piece] = word
        return word

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens (vocabulary strings, no start/end) of ``text`` after cleaning."""
        out: list[str] = []
        for piece in _PATTERN.findall(clean_text(text)):
            if piece in (START_TOKEN, END_TOKEN):
                out.append(piece)
                continue
            mapped = "".join(self._byte_to_symbol[b] for b in piece.encode("utf-8"))
            out.extend(self._bpe(mapped))
        return out

    def encode(self, text: str, add_special_tokens: bool = True, truncate: bool = True) -> list[int]:
        """Token ids of one text: ``[49406, *tokens, 49407]``, cut to ``context_length`` when ``truncate``."""
        ids = [self.encoder[t] for t in self.tokenize(text)]
        if not add_special_tokens:
            return ids[: self.context_length] if truncate else ids
        if truncate:
            ids = ids[: self.context_length - 2]
        return [START_ID, *ids, END_ID]

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: Padding = "longest",
        pad_id: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Tokenise a batch: ``{'input_ids': (B, L) int64, 'attention_mask': (B, L) int64}``.

        padding: "longest" (or True) pads to the longest text, "max_length" to ``context_length``;
        False requires all texts to have the same length.
        """
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = pad_batch([self.encode(t) for t in texts], padding, self.context_length, pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids (cleaned form: lower-case, single spaces)."""
        specials = {START_ID, END_ID}
        tokens = [self.decoder[int(i)] for i in ids if not (skip_special_tokens and int(i) in specials)]
        text = "".join(tokens)
        data = bytearray()
        for ch in text.replace("</w>", " "):
            b = self._symbol_to_byte.get(ch)
            data.extend(ch.encode("utf-8") if b is None else bytes([b]))
        return data.decode("utf-8", errors="replace").strip()
