"""The `imis` command: one entry point, one subcommand per stage.

Every failure the user can cause ends with a one-line reason on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from imis.console import print_table
from imis.errors import ImisError, InputError, PromptError

DEFAULT_MODEL = "imis-lite"  # falls back to litemedsam where imis-lite's weights are not installed

EPILOG_SEGMENT = """\
examples:
  imis segment ct.png --box 60,190,315,385 -o liver.png --overlay liver_overlay.png --overlay-scale 2
  imis segment ch2.nii.gz --axis z --slice 80 --box 91,93,112,121 -o thalamus.nii.gz
  imis segment mr.nrrd --axis x --slice 90 --click 120,88,+ --click 140,90,- -o mask.npy
  imis segment dicom_series/ --slice 12 --box 10,10,80,90 --model sam-vit-b --checkpoint sam_vit_b.pth -o m.nii.gz

  imis segment ch2.nii.gz --axis y --slice 120 --preview coronal.png   # look first: a grid of voxel indices

Inputs: PNG/JPG/TIFF, NIfTI/NRRD/MHA/MHD, DICOM series folders, .npy/.npz (the array alone or under
'image'). Coordinates are native pixels of the (sliced) image: x = column, y = row, 0-based; for a
volume they are the voxel indices of the slice np.take(volume, SLICE, axis) (as ITK-SNAP and 3D Slicer
show a voxel's index). Boxes are x0,y0,x1,y1 inclusive. Clicks are x,y,+ (positive, the default) or
x,y,- (negative). Output formats: .png (one mask: 0/255), .npy, .nii/.nii.gz/.nrrd/.mha (written with the
input's geometry). --overlay and --preview pictures show slices of volumes in the radiological
convention (axial: anterior up, the patient's right on the left; coronal: superior up, right on the
left; sagittal: superior up, anterior on the left) with the prompts drawn; the preview's grid is
labelled with the voxel indices to prompt with.
"""


def _parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected x0,y0,x1,y1")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: coordinates must be numbers") from None
    return (x0, y0, x1, y1)


def _parse_click(text: str) -> tuple[float, float, bool]:
    parts = text.replace(" ", "").split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--click {text!r}: expected x,y or x,y,+ or x,y,-")
    sign = parts[2] if len(parts) == 3 else "+"
    if sign not in ("+", "-", "1", "0", "pos", "neg"):
        raise argparse.ArgumentTypeError(f"--click {text!r}: the third field must be + or -")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--click {text!r}: coordinates must be numbers") from None
    return (x, y, sign in ("+", "1", "pos"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imis",
        description="Interactive medical image segmentation: models, sessions, datasets, benchmarks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `imis COMMAND --help` for the options and examples of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment one image or slice from a box, clicks and/or text",
        description="Segment one 2D image, or one slice of a volume, with a promptable model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_SEGMENT,
    )
    seg.add_argument(
        "image", type=Path, help="PNG/JPG/TIFF, NIfTI/NRRD/MHA/MHD, a DICOM series folder, or .npy/.npz"
    )
    seg.add_argument(
        "--axis", choices=["z", "y", "x"], default=None, help="slicing axis of a volume (default z)"
    )
    seg.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice index of a volume")
    seg.add_argument(
        "--model",
        default=None,
        help=f"registry model (default {DEFAULT_MODEL}, or litemedsam where its weights are missing); "
        "see `imis models`",
    )
    seg.add_argument(
        "--checkpoint", type=Path, default=None, help="weight file for models without embedded weights"
    )
    seg.add_argument("--box", type=_parse_box, default=None, help="x0,y0,x1,y1 in native pixels")
    seg.add_argument("--click", type=_parse_click, action="append", default=[], help="x,y[,+|-]; repeatable")
    seg.add_argument("--text", default=None, help="target name or free text (models that take text)")
    seg.add_argument("--series-uid", default=None, help="DICOM series UID when a folder holds several")
    seg.add_argument(
        "-o", "--output", type=Path, default=None, help="label map to write (.png/.npy/.nii.gz/...)"
    )
    seg.add_argument(
        "--overlay", type=Path, default=None, help="also write a PNG of the mask and prompts on the image"
    )
    seg.add_argument(
        "--overlay-scale",
        type=int,
        default=1,
        metavar="N",
        help="enlarge --overlay N times (1-16; default 1)",
    )
    seg.add_argument(
        "--preview",
        type=Path,
        default=None,
        metavar="PNG",
        help="write the image or slice with a grid of voxel indices (and the prompts); "
        "without -o nothing is segmented",
    )
    seg.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    seg.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="image encoder precision; auto: bfloat16 autocast where the CPU/GPU has fast bf16 (default fp32)",
    )
    seg.set_defaults(func=cmd_segment)

    mod = sub.add_parser(
        "models",
        help="list the model registry and whether weights are available",
        description="List every registry model (prompts it takes, input recipe, license, weights) and the "
        "weight-free baselines that `imis bench` runs.",
    )
    mod.add_argument(
        "--vocabulary",
        default=None,
        metavar="NAME",
        help="print the target names the text prompts of model NAME were trained on",
    )
    mod.set_defaults(func=cmd_models)

    demo = sub.add_parser(
        "demo",
        help="the main job on embedded real data (btcv-demo test split, Colin27)",
        description="Benchmark every registry model with weights available and the GrabCut and random-walker "
        "baselines on btcv-demo's test split and a prepared Colin27+AAL set (single and iterative protocols); "
        "print the leaderboard; write the reports.",
    )
    from imis import demo as demo_module

    demo_module.add_arguments(demo)
    demo.set_defaults(func=demo_module.run)

    from imis.data.commands import register_stats_command
    from imis.data.prepare.commands import register_prepare_commands

    register_prepare_commands(sub)
    register_stats_command(sub)

    from imis.bench.commands import register_bench_commands

    register_bench_commands(sub)

    from imis.train.commands import register_train_command

    register_train_command(sub)
    return parser


def cmd_models(args: argparse.Namespace) -> int:
    from imis.bench.model_names import baseline_rows
    from imis.models.registry import registry_rows

    if args.vocabulary is not None:
        return _print_vocabulary(args.vocabulary)
    rows = registry_rows() + baseline_rows()
    print_table(rows, ["name", "prompts", "input", "intensity", "license", "weights"])
    return 0


def _print_vocabulary(name: str) -> int:
    from imis.models.registry import get_spec
    from imis.models.text_vocabulary import text_vocabulary

    spec = get_spec(name)
    if "text" not in spec.prompt_types:
        raise InputError(f"--vocabulary {name}: model {name!r} takes no text prompts")
    names = text_vocabulary(name)
    if names is None:
        print(f"{name}: no list of trained names is shipped; any text is embedded as given")
        return 0
    print(
        f"# {len(names)} target names {name} was trained on (any other text is embedded too, with a warning)"
    )
    print("\n".join(names))
    return 0


def _check_segment_args(args: argparse.Namespace) -> None:
    """Everything that can be refused before reading the image or loading a model."""
    if args.output is None and args.preview is None:
        raise InputError("pass -o OUTPUT for the mask (or --preview PNG to look at the image first)")
    if args.output is not None and args.box is None and not args.click and args.text is None:
        raise PromptError("no prompt given: pass --box, --click and/or --text")
    if not 1 <= args.overlay_scale <= 16:
        raise InputError(f"--overlay-scale must be from 1 to 16, got {args.overlay_scale}")
    if args.model is not None:
        from imis.bench.baselines import BASELINES
        from imis.models.registry import get_spec

        if args.model in BASELINES:
            raise InputError(
                f"--model {args.model}: a baseline of `imis bench`; imis segment takes the "
                "registry models of `imis models`"
            )
        get_spec(args.model)


def _read_slice(args: argparse.Namespace):
    from imis.io import read_image, slice_volume

    data = read_image(args.image, series_uid=args.series_uid) if args.series_uid else read_image(args.image)
    if data.kind == "volume":
        if args.slice_index is None:
            raise InputError(
                f"{args.image}: is a volume of shape {data.array.shape}; pass --slice N (and --axis)"
            )
        return slice_volume(data, args.axis or "z", args.slice_index)
    if args.slice_index is not None or args.axis is not None:
        raise InputError(f"{args.image}: is a 2D image; --axis/--slice apply to volumes only")
    return data


def _write_preview(args: argparse.Namespace, data) -> None:
    from imis.io.display import orientation_of, write_slice_png

    h, w = data.spatial_shape
    scale = max(1, min(8, round(768 / max(h, w))))
    where = f" {data.slice_info.axis_name}={data.slice_info.index}" if data.slice_info else ""
    plane = orientation_of(data).plane
    title = f"{args.image.name}{where} ({plane}, {w}x{h}): grid = voxel x (column), y (row)"
    write_slice_png(args.preview, data, scale=scale, box=args.box, clicks=args.click, grid=True, title=title)
    print(f"preview: {args.preview} ({plane}; prompt with the x, y indices of its grid)")


def cmd_segment(args: argparse.Namespace) -> int:
    from imis.io import write_label_map
    from imis.models import load_model
    from imis.session import Session
    from imis.session.feedback import result_warnings, text_prompt_warning

    _check_segment_args(args)
    data = _read_slice(args)
    if args.preview is not None:
        _write_preview(args, data)
    if args.output is None:
        return 0
    from imis.models.interactive import resolve_precision
    from imis.models.registry import default_model_name

    dtype = resolve_precision(args.precision, args.device)
    # A weight file without --model keeps the old meaning (a LiteMedSAM-layout file, or one of our own
    # checkpoints, which names its architecture itself).
    name = args.model or ("litemedsam" if args.checkpoint else default_model_name())
    model = load_model(name, checkpoint=args.checkpoint, device=args.device, dtype=dtype)
    warnings = [w for w in [text_prompt_warning(model.name, args.text)] if w]
    t_load = time.perf_counter()
    session = Session(model)
    session.set_image(data.array, name=str(args.image))
    t_enc = time.perf_counter()
    pred = session.predict(clicks=args.click or None, box=args.box, text=args.text)
    t_dec = time.perf_counter()
    session.commit(1)
    labels = session.label_map
    write_label_map(args.output, labels, reference=data)
    if args.overlay is not None:
        from imis.io.display import write_slice_png

        write_slice_png(args.overlay, data, labels, scale=args.overlay_scale, box=args.box, clicks=args.click)
    h, w = labels.shape
    print_table(
        [
            {
                "image": args.image.name,
                "size": f"{w}x{h}",
                "model": model.name,
                "prompts": _describe_prompts(args),
                "mask px": int(pred.mask.sum()),
                "pred IoU": f"{pred.quality:.3f}",
                "encode s": f"{t_enc - t_load:.2f}",
                "decode ms": f"{1000 * (t_dec - t_enc):.0f}",
                "output": str(args.output),
            }
        ]
    )
    for warning in warnings + result_warnings(pred.mask, pred.quality):
        print(f"imis: warning: {warning}", file=sys.stderr)
    return 0


def _describe_prompts(args: argparse.Namespace) -> str:
    parts = []
    if args.box is not None:
        parts.append("box")
    if args.click:
        pos = sum(1 for c in args.click if c[2])
        parts.append(f"{pos}+/{len(args.click) - pos}- clicks")
    if args.text is not None:
        parts.append(f"text {args.text!r}")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ImisError as exc:
        print(f"imis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
