"""BERT WordPiece tokenizer (uncased), as configured for all-MiniLM-L6-v2.

Pipeline for one string, matching the Hugging Face fast ``BertTokenizer`` built from the model's
``tokenizer.json`` / ``tokenizer_config.json``:

1. **Special tokens** written literally in the text (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``,
   ``[MASK]``; exact case) become their ids; the text between them goes through steps 2-4.
2. **Normalisation**: characters U+0000, U+FFFD and other control, format, private-use and surrogate
   characters (Unicode categories ``Cc Cf Co Cs``; tab, newline and carriage return excepted; unassigned
   code points are kept) are removed; whitespace becomes a space; CJK ideographs
   get a space on each side; accents are stripped (NFD, then nonspacing marks ``Mn`` dropped) and every
   character is lower-cased on its own (no word-final sigma rule), both when ``do_lower_case``
   (``strip_accents`` unset follows ``do_lower_case``, as in BERT).
3. **Pre-tokenisation**: split on whitespace; every punctuation character (ASCII symbols
   ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~`` and Unicode categories ``P*``) is a word of its own.
4. **WordPiece**: each word longer than 100 characters is ``[UNK]``; otherwise it is cut greedily into the
   longest vocabulary entries from the left, continuation pieces prefixed ``##``; a word with any part
   not in the vocabulary becomes a single ``[UNK]``.
5. **Specials and length**: ``[CLS] tokens [SEP]``, at most ``max_length`` ids (the model's 512; longer
   texts keep their first ``max_length - 2`` tokens).

Unicode properties come from Python's ``unicodedata``. The Rust ``tokenizers`` library uses older tables
for character categories, so characters assigned or re-categorised in recent Unicode versions can split
differently from the fast tokenizer: checked one by one under Python 3.11 (Unicode 14), 503 of the 1.1 M
code points do (the Arabic end-of-text mark U+061D, U+2E43..U+2E5D, new combining marks and format
characters of Indic, Arabic and historic scripts), none of them below U+061D, in CJK or in the symbols.

Batches are right-padded with ``[PAD]`` (id 0) and come with an attention mask and (all-zero)
token-type ids.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch

from imis.errors import ModelNotAvailableError
from imis.models.text.batch import Padding, pad_batch

__all__ = ["WordPieceTokenizer", "basic_tokenize", "normalize_text"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_KEEP_CONTROLS = frozenset("\t\n\r")
# CJK Unified Ideographs and their extensions / compatibility blocks (BERT's definition of "Chinese").
# The Rust ``tokenizers`` library behind the fast tokenizer starts its Extension E range at U+2B920, not
# U+2B820 as Google's BERT does; we follow the fast tokenizer (U+2B820..U+2B91F are ordinary letters).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_whitespace(ch: str) -> bool:
    return ch in _KEEP_CONTROLS or ch.isspace()


def _is_removed(ch: str) -> bool:
    """Characters the cleaning step drops: NUL, U+FFFD and categories Cc, Cf, Co, Cs but tab/newline/CR."""
    if ch in _KEEP_CONTROLS:
        return False
    category = unicodedata.category(ch)
    return ch == "\x00" or ch == "\ufffd" or (category.startswith("C") and category != "Cn")


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def normalize_text(
    text: str, lowercase: bool = True, strip_accents: bool | None = None, handle_cjk: bool = True
) -> str:
    """Step 2 of the pipeline: clean, pad CJK ideographs, strip accents, lower-case.

    ``strip_accents=None`` means "as ``lowercase``" (BERT's convention for uncased vocabularies).
    """
    out: list[str] = []
    for ch in text:
        if _is_removed(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif handle_cjk and _is_cjk(ord(ch)):
            out.extend((" ", ch, " "))
        else:
            out.append(ch)
    text = "".join(out)
    if strip_accents if strip_accents is not None else lowercase:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    if lowercase:
        text = "".join(c.lower() for c in text)
    return text


def basic_tokenize(text: str) -> list[str]:
    """Step 3: split normalised text on whitespace and isolate every punctuation character."""
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if _is_whitespace(ch) or _is_punctuation(ch):
            if current:
                words.append("".join(current))
                current = []
            if not _is_whitespace(ch):
                words.append(ch)
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


class WordPieceTokenizer:
    """BERT WordPiece tokenizer: ``encode`` gives ``[CLS] ... [SEP]`` ids, ``__call__`` a padded batch.

    Args:
        vocab: token -> id (from ``vocab.txt``: one token per line, id = line number).
        lowercase: lower-case the text (``do_lower_case``).
        strip_accents: strip accents; None follows ``lowercase``.
        handle_cjk: put spaces around CJK ideographs (``tokenize_chinese_chars``).
        max_length: maximum ids per text including ``[CLS]`` and ``[SEP]`` (``model_max_length``).
        max_chars_per_word: longer words become ``[UNK]``.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        handle_cjk: bool = True,
        max_length: int = 512,
        max_chars_per_word: int = 100,
    ) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {', '.join(missing)}")
        if max_length < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        self.vocab = dict(vocab)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.handle_cjk = handle_cjk
        self.max_length = max_length
        self.max_chars_per_word = max_chars_per_word
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> WordPieceTokenizer:
        """Build from a Hugging Face model folder: ``vocab.txt`` plus ``tokenizer_config.json`` if present."""
        folder = Path(folder)
        vocab_file = folder / "vocab.txt"
        if not vocab_file.is_file():
            raise ModelNotAvailableError(f"{vocab_file}: WordPiece vocabulary not found")
        lines = vocab_file.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        vocab: dict[str, int] = {}
        for i, line in enumerate(lines):
            vocab[line.rstrip("\r")] = i  # a repeated line keeps its last id, as BERT's loader does
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        max_length = config.get("model_max_length", 512)
        if not isinstance(max_length, int) or max_length > 1_000_000:  # HF writes 1e30 for "no limit"
            max_length = 512
        return cls(
            vocab,
            lowercase=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents"),
            handle_cjk=config.get("tokenize_chinese_chars", True),
            max_length=max_length,
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _wordpiece(self, word: str) -> list[int]:
        """Step 4 for one word: its piece ids, or ``[unk_id]``."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids: list[int] = []
        if len(word) > self.max_chars_per_word:
            ids = [self.unk_id]
        else:
            start = 0
            while start < len(word):
                end = len(word)
                found = None
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    found = self.vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def _split_specials(self, text: str) -> list[tuple[str, bool]]:
        """Cut ``text`` at literal special tokens: ``[(chunk, is_special), ...]``, scanning left to right."""
        parts: list[tuple[str, bool]] = []
        start = i = 0
        while i < len(text):
            if text[i] == "[":
                match = next((t for t in SPECIAL_TOKENS if text.startswith(t, i)), None)
                if match is not None:
                    if i > start:
                        parts.append((text[start:i], False))
                    parts.append((match, True))
                    i += len(match)
                    start = i
                    continue
            i += 1
        if start < len(text):
            parts.append((text[start:], False))
        return parts

    def tokenize_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``[CLS]``/``[SEP]`` and without truncation."""
        ids: list[int] = []
        for chunk, special in self._split_specials(text):
            if special:
                ids.append(self.vocab[chunk])
                continue
            normalised = normalize_text(chunk, self.lowercase, self.strip_accents, self.handle_cjk)
            for word in basic_tokenize(normalised):
                ids.extend(self._wordpiece(word))
        return ids

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens (vocabulary strings, no ``[CLS]``/``[SEP]``) of ``text``."""
        return [self.ids_to_tokens[i] for i in self.tokenize_ids(text)]

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """Ids of one text: ``[CLS, *tokens, SEP]``, at most ``max_length`` (default: ``self.max_length``)."""
        limit = self.max_length if max_length is None else max_length
        ids = self.tokenize_ids(text)
        if not add_special_tokens:
            return ids[:limit]
        if limit < 2:
            raise ValueError("max_length must leave room for [CLS] and [SEP]")
        return [self.cls_id, *ids[: limit - 2], self.sep_id]

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: Padding = "longest",
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise a batch: ``input_ids``, ``attention_mask``, ``token_type_ids``, each (B, L) int64.

        Every text is cut to ``max_length`` ids (default ``self.max_length``). padding: "longest" (or True)
        pads to the longest text, "max_length" to ``max_length``; False requires equal lengths.
        """
        if isinstance(texts, str):
            texts = [texts]
        limit = self.max_length if max_length is None else max_length
        ids, mask = pad_batch([self.encode(t, max_length=limit) for t in texts], padding, limit, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids: pieces joined, ``##`` continuations glued to the previous piece."""
        specials = {self.vocab[t] for t in SPECIAL_TOKENS}
        words: list[str] = []
        for i in ids:
            if skip_special_tokens and int(i) in specials:
                continue
            token = self.ids_to_tokens[int(i)]
            if token.startswith("##") and words:
                words[-1] += token[2:]
            else:
                words.append(token)
        return " ".join(words)
