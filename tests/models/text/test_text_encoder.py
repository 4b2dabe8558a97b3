"""CLIP BPE tokenizer and CLIP text tower against the parity fixtures (clip_token_ids.json, imisnet_small.pt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imis.errors import ModelNotAvailableError
from imis.models.text import tokenizer as tokmod
from imis.models.text.text_encoder import CLIPTextEncoder
from imis.models.text.tokenizer import END_ID, START_ID, CLIPTokenizer


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    try:
        return CLIPTokenizer()
    except ModelNotAvailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def imis_small(parity_dir: Path) -> dict:
    return torch.load(parity_dir / "imisnet_small.pt", weights_only=False)


def _text_tower(fixture: dict) -> CLIPTextEncoder:
    sd = fixture["state_dict"]
    enc = CLIPTextEncoder.from_config(fixture["config"]["text"])
    enc.load_state_dict({k[len("text_model.") :]: v for k, v in sd.items() if k.startswith("text_model.")})
    return enc.eval()


def test_tokenizer_reproduces_table(tok: CLIPTokenizer, parity_dir: Path) -> None:
    table = json.loads((parity_dir / "clip_token_ids.json").read_text())
    assert table["rows"]
    for row in table["rows"]:
        assert tok.encode(row["text"]) == row["ids"], row["text"]


def test_tokenizer_cleaning_truncation_padding(tok: CLIPTokenizer) -> None:
    base = tok.encode("A segmentation area of a liver.")
    # Case, repeated/odd whitespace and HTML entities are normalised away.
    assert tok.encode("  a   SEGMENTATION\tarea of a\nliver&#46; ") == base
    assert tok.decode(base) == "a segmentation area of a liver ."
    long = tok.encode("word " * 200)
    assert len(long) == 77 and long[0] == START_ID and long[-1] == END_ID
    assert tok.encode("") == [START_ID, END_ID]
    batch = tok(["a liver", "A segmentation area of a liver."], pad_id=0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, len(base))
    assert ids[1].tolist() == base and mask[1].all()
    assert mask[0].tolist() == [1] * 4 + [0] * (len(base) - 4) and ids[0, 4:].eq(0).all()
    assert tok(["a"], padding="max_length")["input_ids"].shape == (1, 77)


def test_tokenizer_missing_vocabulary_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotAvailableError, match="not found"):
        CLIPTokenizer(vocab_path=tmp_path / "absent.txt.gz")
    monkeypatch.delenv("IMIS_CLIP_BPE", raising=False)
    monkeypatch.setattr(tokmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps open-clip-torch"):
        tokmod.locate_bpe_vocab()


def test_text_tower_reproduces_pooled_and_projection(imis_small: dict, tok: CLIPTokenizer) -> None:
    enc = _text_tower(imis_small)
    ids = imis_small["inputs"]["text_input_ids"]
    assert ids[0].tolist() == tok.encode("A segmentation area of a liver.")
    with torch.no_grad():
        pooled = enc(ids)
    assert pooled.shape == imis_small["text_pooled"].shape
    assert (pooled - imis_small["text_pooled"]).abs().max().item() <= 1e-4
    sd = imis_small["state_dict"]
    emb = torch.nn.functional.linear(pooled, sd["text_out_dim.weight"], sd["text_out_dim.bias"])
    assert (emb - imis_small["text_embedding"]).abs().max().item() <= 1e-4


def test_padding_does_not_change_pooled(imis_small: dict, tok: CLIPTokenizer) -> None:
    enc = _text_tower(imis_small)
    texts = ["A segmentation area of a liver.", "A segmentation area of a portal vein and splenic vein."]
    with torch.no_grad():
        single = torch.cat([enc(torch.tensor([tok.encode(t)])) for t in texts])
        for pad_id in (0, END_ID):
            batch = tok(texts, pad_id=pad_id)
            assert batch["attention_mask"][0].eq(0).any()
            padded = enc(batch["input_ids"], batch["attention_mask"])
            assert (padded - single).abs().max().item() <= 1e-5
            # The causal mask alone already hides padding after the EOS from the pooled position.
            assert (enc(batch["input_ids"]) - single).abs().max().item() <= 1e-5
        hidden = enc.hidden_states(batch["input_ids"], batch["attention_mask"])
    assert hidden.shape == (*batch["input_ids"].shape, enc.hidden_size)


def test_text_tower_names_and_default_config() -> None:
    enc = CLIPTextEncoder(num_layers=1)
    names = set(enc.state_dict())
    for i in ("q", "k", "v", "out"):
        assert f"encoder.layers.0.self_attn.{i}_proj.weight" in names
    assert {
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        "encoder.layers.0.layer_norm1.weight",
        "encoder.layers.0.mlp.fc1.weight",
        "encoder.layers.0.mlp.fc2.bias",
        "encoder.layers.0.layer_norm2.bias",
        "final_layer_norm.weight",
    } <= names
    assert enc.embeddings.token_embedding.weight.shape == (49408, 512)
    assert enc.embeddings.position_embedding.weight.shape == (77, 512)
    with pytest.raises(ValueError, match="maximum is 77"):
        enc(torch.zeros(1, 78, dtype=torch.long))


@pytest.mark.slow
def test_matches_hf_clip_text_model_with_padding() -> None:
    """Cross-check against HF transformers (test-only dependency) on random weights with a padding mask."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408
    )
    hf = transformers.CLIPTextModel(cfg).eval()
    sd = {k.removeprefix("text_model."): v for k, v in hf.state_dict().items() if "position_ids" not in k}
    ours = CLIPTextEncoder(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4).eval()
    ours.load_state_dict(sd)
    ids = torch.tensor(
        [[START_ID, 320, 12639, 269, END_ID, END_ID, END_ID], [START_ID, 320, 1, 2, 3, 269, END_ID]]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        hidden = ours.hidden_states(ids, mask)
        pooled = ours(ids, mask)
    valid = mask.bool()
    assert (hidden - ref.last_hidden_state)[valid].abs().max().item() <= 1e-5
    assert (pooled - ref.pooler_output).abs().max().item() <= 1e-5
