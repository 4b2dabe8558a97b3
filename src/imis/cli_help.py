"""The long help texts of the `imis` subcommands that :mod:`imis.cli` defines (descriptions, notes and
examples), kept apart from the parser and the command code; tests/cli/test_help.py parses every
example line against the real parser."""

from __future__ import annotations

__all__ = ["EPILOG_DEMO", "EPILOG_MODELS", "EPILOG_SEGMENT", "EPILOG_SERVE", "EXPORT_HELP"]

EPILOG_SEGMENT = """\
examples:
  imis segment ct.png --box 60,190,315,385 -o liver.png --overlay liver_overlay.png --overlay-scale 2
  imis segment ch2.nii.gz --axis z --slice 80 --box 91,93,112,121 -o thalamus.nii.gz
  imis segment mr.nrrd --axis x --slice 90 --click 120,88,+ --click 140,90,- -o mask.npy
  imis segment dicom_series/ --slice 12 --box 10,10,80,90 --model sam-vit-b --checkpoint sam_vit_b.pth -o m.nii.gz
  imis segment ch2.nii.gz --axis z --slice 78 --box 67,92,90,121 --propagate -o thalamus.nii.gz
  imis segment ct.nii.gz --axis z --slice 40 --text liver --propagate --labels old.nii.gz -o all.nii.gz
  imis segment dicom_series/ --slice 2 --box 4,4,11,9 --propagate --name tumour -o seg.dcm
  imis segment ch2.nii.gz --axis y --slice 120 --preview coronal.png   # look first: a grid of voxel indices

Inputs: PNG/JPG/TIFF, NIfTI/NRRD/MHA/MHD, DICOM series folders, .npy/.npz (the array alone or under
'image'). Coordinates are native pixels of the (sliced) image: x = column, y = row, 0-based; for a
volume they are the voxel indices of the slice np.take(volume, SLICE, axis) (as ITK-SNAP and 3D Slicer
show a voxel's index). Boxes are x0,y0,x1,y1 inclusive. Clicks are x,y,+ (positive, the default) or
x,y,- (negative). Output formats: .png (one mask: 0/255), .npy, .nii/.nii.gz/.nrrd/.mha (written with the
input's geometry), .dcm (DICOM SEG, for a DICOM series input, validated on read-back). --overlay and
--preview pictures show slices of volumes in the radiological convention (axial: anterior up, the
patient's right on the left; coronal: superior up, right on the left; sagittal: superior up, anterior on
the left; 3D Slicer's default views) with the prompts drawn; the preview's grid is labelled with the
voxel indices to prompt with.

Volumes: coordinates and label maps are never flipped (only pictures are). A z slice shows (rows = y, columns = x), a y slice (rows = z,
columns = x), an x slice (rows = z, columns = y), as `np.take(volume, K, axis)`. --propagate segments
the neighbouring slices of the same axis in both directions from the prompted one (stopping where the
structure ends) and writes one label map of the whole volume; --labels adds the object to an existing
label map of the same geometry (objects already there are never overwritten).
"""


EXPORT_HELP = """\
Export a model as two ONNX graphs and a manifest, for ONNX Runtime (Python, C++, onnxruntime-web)
and other runtimes, without torch or imis:

  DIR/encoder.onnx    image (1, 3, S, S) preprocessed -> image_embeddings; run once per image
  DIR/decoder.onnx    image_embeddings + prompt tokens (any number of clicks, an optional box, an
                      optional previous mask, an optional text embedding) -> low-res mask logits and
                      predicted IoU for every mask token; run once per click
  DIR/manifest.json   model, license, weights digest, input size, the preprocessing recipe step by
                      step, the decoder's inputs and label codes, how to pick a mask and bring it
                      back to native resolution
  DIR/run_onnx.py     a numpy + onnxruntime example that follows the manifest (box or clicks)
  DIR/encoder.int8.onnx  with --quantize int8: the encoder with int8 weights (smaller, often faster;
                      check the masks on your data, see README "ONNX export and runtime")

`imis segment/bench --backend onnx --checkpoint DIR` run an export inside imis.

examples:
  imis export imis-lite --format onnx -o exports/imis-lite
  imis export litemedsam -o exports/litemedsam --quantize int8
  imis export sam-vit-b --checkpoint sam_vit_b_01ec64.pth -o exports/sam-vit-b --opset 18
  python exports/imis-lite/run_onnx.py ct.npy --box 60,190,315,385 -o liver.npy
"""


EPILOG_MODELS = """\
examples:
  imis models                          # the table: name, prompts, input recipe, license, weights
  imis models --vocabulary imis-lite   # the target names imis-lite's text prompts were trained on
"""


EPILOG_DEMO = """\
examples:
  imis demo --shared ../shared --out runs/demo          # what `make run` does
  imis demo --models litemedsam,grabcut --limit-images 2 --out runs/demo-quick
  imis demo --resume --out runs/demo                    # finish an interrupted demo
"""


EPILOG_SERVE = """\
examples:
  imis serve                                   # upload files in the page; http://127.0.0.1:8000/
  imis serve ../shared/data/btcv-demo/image    # also pick files from this folder in the page
  imis serve /data --host 0.0.0.0 --port 8080 --token s3cret   # remote: open http://HOST:8080/?token=s3cret
  IMIS_TOKEN=s3cret imis serve /data --max-upload-mb 1024 --model litemedsam

  imis serve /data --backend auto --precision auto             # fastest runtime that keeps the masks

The browser tool: open NIfTI/NRRD/MHA/DICOM (zip or folder)/PNG/JPG, click/box/scribble/lasso/text prompts,
undo/redo, objects, volume views, propagation and a 3D view, export NIfTI/NRRD/PNG/DICOM SEG. A token is required on every API call when
given (--token or IMIS_TOKEN), and always when --host is not loopback (one is generated and printed).
"""
