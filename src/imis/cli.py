"""The `imis` command: one entry point, one subcommand per stage.

Every failure the user can cause ends with a one-line reason on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from imis.cli_help import EPILOG_DEMO, EPILOG_MODELS, EPILOG_SEGMENT, EPILOG_SERVE, EXPORT_HELP
from imis.console import print_table
from imis.errors import ImisError, InputError, PromptError


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
    from imis.runtime_options import (
        add_checkpoint_argument,
        add_model_arguments,
        add_runtime_arguments,
        add_zoom_argument,
    )

    add_model_arguments(seg)
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
    seg.add_argument(
        "--propagate",
        action="store_true",
        help="volumes: propagate the mask through the neighbouring slices and write a whole-volume label map",
    )
    seg.add_argument(
        "--refine",
        choices=["none", "orthogonal"],
        default="none",
        help="volumes, with --propagate: re-segment the propagated mask along the other two axes from its "
        "tight boxes and keep the majority of the three (docs/volumes.md)",
    )
    seg.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="volumes: existing label map (same geometry) to add the object to",
    )
    seg.add_argument("--name", default=None, help="name of the object (DICOM SEG segment label)")
    seg.add_argument("--label", type=int, default=None, help="label value of the object (default: next free)")
    add_runtime_arguments(seg, device_help="torch device (cpu, cuda, cuda:1)")
    add_zoom_argument(seg)
    seg.set_defaults(func=cmd_segment)

    exp = sub.add_parser(
        "export",
        help="export a model as ONNX (encoder + decoder + manifest) for other runtimes",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("model", help="registry model (see `imis models`)")
    exp.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    exp.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder to write")
    add_checkpoint_argument(exp)
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset, 18-23 (default 18)")
    exp.add_argument(
        "--quantize", choices=["int8"], default=None, help="also write encoder.int8.onnx (int8 weights)"
    )
    exp.set_defaults(func=cmd_export)

    mod = sub.add_parser(
        "models",
        help="list the model registry and whether weights are available",
        description="List every registry model (prompts it takes, input recipe, license, weights) and the "
        "weight-free baselines that `imis bench` runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_MODELS,
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_DEMO,
    )
    from imis import demo as demo_module

    demo_module.add_arguments(demo)
    demo.set_defaults(func=demo_module.run)

    from imis.data.commands import register_stats_command
    from imis.data.prepare.commands import register_prepare_commands

    register_prepare_commands(sub)
    register_stats_command(sub)

    _add_serve(sub)

    from imis.bench.commands import register_bench_commands

    register_bench_commands(sub)

    from imis.train.commands import register_train_command

    register_train_command(sub)

    from imis.automask.commands import register_automask_command

    register_automask_command(sub)
    return parser


def _add_serve(sub) -> None:
    srv = sub.add_parser(
        "serve",
        help="the browser tool: interactive segmentation in a web page",
        description="Serve the interactive segmentation web app (FastAPI + a static page, no build step).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_SERVE,
    )
    srv.add_argument(
        "data_dir", nargs="?", type=Path, default=None, help="folder whose files the page can open"
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    from imis.runtime_options import add_model_arguments, add_runtime_arguments, add_zoom_argument

    add_model_arguments(srv)
    srv.add_argument("--token", default=None, help="access token required by the API (default: $IMIS_TOKEN)")
    srv.add_argument("--max-upload-mb", type=float, default=512, help="largest upload accepted (default 512)")
    srv.add_argument(
        "--max-sessions", type=int, default=16, help="documents kept in memory (LRU, default 16)"
    )
    add_runtime_arguments(srv, device_help="torch device (cpu, cuda)")
    add_zoom_argument(srv)
    srv.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from imis.app.server import ServeConfig, check_config, runtime_label, serve

    config = ServeConfig(
        data_dir=args.data_dir,
        token=args.token or os.environ.get("IMIS_TOKEN") or None,
        max_upload_mb=args.max_upload_mb,
        model=args.model,
        checkpoint=args.checkpoint,
        max_sessions=args.max_sessions,
    )
    check_config(config)  # a wrong DATA_DIR is reported before the model loads
    # the same --model/--checkpoint/--backend/--precision rule as `imis segment`
    backend, dtype = _runtime_of(args)
    config.runtime = runtime_label(backend, dtype)
    return serve(config, args.host, args.port, _load_for(args))


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
    if args.refine != "none" and not args.propagate:
        raise InputError(f"--refine {args.refine}: refines a propagation; add --propagate")
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
    from imis.io import read_image, write_label_map
    from imis.session import Session
    from imis.session.feedback import result_warnings, text_prompt_warning

    _check_segment_args(args)
    if args.output is not None and (args.propagate or args.labels is not None):
        data = (
            read_image(args.image, series_uid=args.series_uid) if args.series_uid else read_image(args.image)
        )
        return _segment_volume(args, data)
    data = _read_slice(args)
    if args.preview is not None:
        _write_preview(args, data)
    if args.output is None:
        return 0
    model = _load_for(args)
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


def _load_for(args: argparse.Namespace):
    """The model `imis segment` (and `imis serve`) runs: --model/--checkpoint on --backend at --precision."""
    from imis.models import load_model

    backend, dtype = _runtime_of(args)
    model = load_model(
        _model_name(args), checkpoint=args.checkpoint, device=args.device, dtype=dtype, backend=backend
    )
    if getattr(args, "zoom", None):  # imis segment --zoom [K] (zoom-in refinement, imis.models.zoom)
        from imis.models.zoom import ZoomConfig, ZoomModel

        return ZoomModel(model, ZoomConfig(start=args.zoom))
    return model


def _model_name(args: argparse.Namespace) -> str | None:
    from imis.models.onnx.backend import is_onnx_export
    from imis.models.registry import default_model_name

    # A weight file without --model keeps the old meaning (a LiteMedSAM-layout file, or one of our own
    # checkpoints, which names its architecture itself); an ONNX export names its model.
    if args.model is None and is_onnx_export(args.checkpoint):
        return None
    return args.model or ("litemedsam" if args.checkpoint else default_model_name())


def _runtime_of(args: argparse.Namespace) -> tuple[str, object]:
    """(backend, dtype) for --backend/--precision on --device (the documented rule of resolve_runtime)."""
    from imis.models.onnx.backend import resolve_runtime

    return resolve_runtime(args.backend, args.precision, args.device, _model_name(args))


def _segment_volume(args: argparse.Namespace, data) -> int:
    """--propagate / --labels: one object in a whole-volume label map (VolumeSession)."""
    from tqdm import tqdm

    from imis.io import file_extension, read_image, slice_volume, write_label_map
    from imis.session import VolumeSession

    if data.kind != "volume":
        raise InputError(
            f"{args.image}: is a 2D image of shape {data.array.shape}; --propagate/--labels need a volume"
        )
    if args.slice_index is None:
        raise InputError(f"{args.image}: pass --slice K (and --axis) for the slice the prompts are on")
    dicom_out = file_extension(args.output) == ".dcm"
    if dicom_out and not data.meta.get("files"):
        raise InputError(
            f"{args.output}: DICOM SEG output needs a DICOM series folder as input; use .nii.gz/.nrrd"
        )
    slice_volume(data, args.axis or "z", args.slice_index)  # an out-of-range slice fails before any work
    existing = read_image(args.labels) if args.labels is not None else None
    session = VolumeSession(_load_for(args), cache_size=64)
    session.open(data)
    if existing is not None:
        session.import_labels(existing)  # shape and geometry checked before anything is encoded
    session.set_slice(args.axis or "z", args.slice_index)
    t0 = time.perf_counter()
    pred = session.predict(clicks=args.click or None, box=args.box, text=args.text)
    if not pred.mask.any():
        raise PromptError(
            f"{args.image}: the prompts gave an empty mask on slice {args.slice_index}; nothing written"
        )
    result = None
    if args.propagate:
        with tqdm(total=0, desc="propagating", unit="slice", disable=None) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            result = session.propagate(progress=progress)
        if args.refine == "orthogonal":
            session.refine_orthogonal()
    label = session.commit(label=args.label, name=args.name or args.text)
    labels = session.label_map
    if dicom_out:
        from imis.io.dicom_seg import write_dicom_seg

        write_dicom_seg(args.output, labels, data, names={o.label: o.name for o in session.objects if o.name})
    else:
        write_label_map(args.output, labels, reference=data)
    stops = (
        ", ".join(f"{d}: {r}" + (f" at {i}" if i is not None else "") for d, (i, r) in result.stops.items())
        if result
        else "-"
    )
    print_table(
        [
            {
                "image": args.image.name,
                "shape zyx": "x".join(map(str, labels.shape)),
                "model": session.model.name,
                "prompts": _describe_prompts(args),
                "slices": len(result.slices) + 1 if result else 1,
                "stops": stops,
                "voxels": int((labels == label).sum()),
                "label": label,
                "seconds": f"{time.perf_counter() - t0:.1f}",
                "output": str(args.output),
            }
        ]
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from imis.models import load_model
    from imis.models.onnx.export import DEFAULT_OPSET, check_opset, export_onnx

    opset = check_opset(args.opset if args.opset is not None else DEFAULT_OPSET)  # before the slow part
    model = load_model(args.model, checkpoint=args.checkpoint)
    t0 = time.perf_counter()
    manifest = export_onnx(model, args.output, opset=opset, quantize=args.quantize)
    rows = []
    for role, fname in manifest["files"].items():
        size = (args.output / fname).stat().st_size
        rows.append({"file": str(args.output / fname), "role": role, "MB": f"{size / 1e6:.1f}"})
    print_table(rows)
    print(
        f"{manifest['model']}: opset {manifest['opset']}, input {manifest['input_size']}, "
        f"embedding {manifest['embedding_shape']}, {time.perf_counter() - t0:.0f} s; "
        f"recipe in {args.output / 'manifest.json'}, example in {args.output / 'run_onnx.py'}"
    )
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
