"""Automask: the dense "interactive masks" of IMed-361M (paper §3.2), `imis automask`.

Stages (one module each; a lower one never imports a higher one):
settings -> generate (click grid, batched decoding, IoU/stability) -> filters (area, NMS) -> qc (GT
quality control, clean-up, id map) -> pipeline (one image) -> store (files, resume) -> executor
(local, processes, Ray) -> run -> commands (CLI).
"""
