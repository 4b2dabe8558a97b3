"""ONNX export and the ONNX Runtime backend of every registry model.

``export``: a model -> encoder.onnx + decoder.onnx + manifest.json; ``runtime``: an InteractiveModel
whose encoder and decoder run in ONNX Runtime; ``manifest``: the export's description;
``standalone.py``: a numpy + onnxruntime example copied into each export (no torch, no imis).
"""
