"""The text towers of the promptable models and their tokenizers, written from the published formats:

* :mod:`.tokenizer` - CLIP's byte-level BPE tokenizer (IMIS-Net's text prompts)
* :mod:`.text_encoder` - CLIP's text transformer (IMIS-Net's text tower)
* :mod:`.wordpiece` - BERT's WordPiece tokenizer (MiniLM's)
* :mod:`.minilm` - the all-MiniLM-L6-v2 sentence encoder (imis-lite's frozen text tower)

Weight layouts live in :mod:`imis.models.formats`; which tower a model uses is its registry spec's.
"""
