"""A checkpoint that also pickles Python objects (SAM-Med2D's training script saves its Adam optimizer
object beside the weights) loads its tensors; nothing the pickle names outside torch's allow-list runs."""

from __future__ import annotations

import os

import torch

from imis.models.formats.tolerant import Opaque
from imis.models.registry import read_checkpoint


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_optimizer_object_beside_the_weights(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "sam-med2d_like.pth"
    torch.save({"model": net.state_dict(), "optimizer": opt, "epoch": 3}, path)
    obj = read_checkpoint(path, tolerant=True)
    assert torch.equal(obj["model"]["weight"], net.weight.detach())
    assert isinstance(obj["optimizer"], Opaque) and obj["epoch"] == 3


def test_pickled_code_does_not_run(tmp_path):
    target = tmp_path / "made_by_the_pickle"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Evil(str(target))}, path)
    obj = read_checkpoint(path, tolerant=True)
    assert isinstance(obj["x"], Opaque)
    assert not target.exists()
    assert torch.equal(obj["model"]["w"], torch.zeros(2))
