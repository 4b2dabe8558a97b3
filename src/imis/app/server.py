"""`imis serve`: the FastAPI application (HTTP API + the static page) and how to run it with uvicorn.

API (JSON unless said otherwise; every /api call needs the token when one is set):
  GET  /api/info                          model, license, prompt types, limits
  GET  /api/files?path=REL                folders and openable files of DATA_DIR
  POST /api/open {"path": REL}            open a file or DICOM folder of DATA_DIR
  POST /api/upload?name=FILE  (raw body)  open an uploaded file (413 over the limit)
  GET  /api/s/ID                          the session's state (page reload restores from it)
  GET  /api/s/ID/slice?axis=z&index=N     the plane: float32 image + uint16 labels (binary)
  GET  /api/s/ID/encoded?axis=z&index=N   whether the plane's embedding is ready
  POST /api/s/ID/prompt {axis, index, kind: click|box|text|scribble|lasso, value}
  POST /api/s/ID/history {op: undo|redo|reset, axis, index}
  POST /api/s/ID/objects {op: next|select|update|delete, label, name, color, visible, axis, index}
  POST /api/s/ID/propagate {axis, index, max_slices}   GET /api/s/ID/progress
  GET  /api/s/ID/export?fmt=nii.gz|nii|nrrd|png|dcm     POST /api/s/ID/import?name=FILE (raw body)
  GET  /api/s/ID/render3d?azimuth=DEG&elevation=DEG&size=PX   the 3D view of the label map (PNG)
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import secrets
import shutil
import signal
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask

from imis.app.backend import Backend, ServeConfig
from imis.app.files import AppError, list_dir, open_path, resolve_in, safe_filename, save_upload, write_export
from imis.app.render3d import png_bytes, render
from imis.errors import ImisError, InputError

STATIC = Path(str(resources.files("imis.app") / "static"))


def create_app(config: ServeConfig, model) -> FastAPI:
    be = Backend(config, model)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        be.close()

    app = FastAPI(title="imis", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.backend = be
    _install_guards(app, config)
    _routes_open(app, be)
    _routes_session(app, be)
    _routes_objects(app, be)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _install_guards(app: FastAPI, config: ServeConfig) -> None:
    @app.middleware("http")
    async def token_guard(request: Request, call_next):
        if config.token and request.url.path.startswith("/api/"):
            given = request.headers.get("x-imis-token") or request.headers.get("authorization", "")
            given = given.removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), config.token.encode()):
                what = "wrong" if given else "missing"
                return JSONResponse({"detail": f"{what} access token: open the page with ?token=..."}, 401)
        return await call_next(request)

    @app.exception_handler(AppError)
    async def app_error(_, exc: AppError):
        return JSONResponse({"detail": exc.message}, exc.status)

    @app.exception_handler(ImisError)
    async def imis_error(_, exc: ImisError):
        return JSONResponse({"detail": str(exc)}, 400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_, exc: RequestValidationError):
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        return JSONResponse({"detail": f"malformed request: {errs}"}, 400)


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except Exception:
        raise AppError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise AppError(400, "the request body must be a JSON object")
    return body


def _plane(body: dict) -> tuple[str, int]:
    try:
        return str(body.get("axis", "z")), int(body.get("index", 0))
    except (TypeError, ValueError):
        raise AppError(400, "axis/index: expected a view axis and an integer slice") from None


def _routes_open(app: FastAPI, be: Backend) -> None:
    cfg = be.config

    @app.get("/api/info")
    async def info():
        m = be.model
        return {
            "model": m.name,
            "license": m.license,
            "runtime": cfg.runtime,
            "prompts": sorted(m.prompt_types),
            "data_dir": cfg.data_dir is not None,
            "max_upload_mb": cfg.max_upload_mb,
            "sessions": len(be.store),
            "embeddings": len(be.cache),
        }

    def data_root() -> Path:
        if cfg.data_dir is None:
            raise AppError(404, "no data folder: start the server as `imis serve DATA_DIR` or upload a file")
        return cfg.data_dir

    @app.get("/api/files")
    async def files(path: str = ""):
        return list_dir(data_root(), path)

    @app.post("/api/open")
    async def open_file(request: Request):
        body = await _body(request)
        path = resolve_in(data_root(), str(body.get("path", "")))
        entry = await be.open_document(path, path.name)
        return be.state(entry)

    @app.post("/api/upload")
    async def upload(request: Request, name: str = ""):
        fname = safe_filename(name)
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=be.workdir))
        try:
            dest = folder / fname
            await save_upload(request.stream(), _content_length(request), be.upload_limit, dest)
            entry = await be.open_document(dest, fname)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return be.state(entry)


def _content_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _routes_session(app: FastAPI, be: Backend) -> None:
    @app.get("/api/s/{sid}")
    async def state(sid: str):
        return be.state(be.store.get(sid))

    @app.delete("/api/s/{sid}")
    async def close(sid: str):
        be.store.remove(sid)
        return {"closed": sid}

    @app.get("/api/s/{sid}/slice")
    async def slice_(sid: str, axis: str = "z", index: int = 0):
        entry = be.store.get(sid)
        doc = entry.doc
        async with entry.lock:
            axis, index = doc.check_plane(axis, index)
            img, lab = doc.display_plane(axis, index), doc.label_plane(axis, index)
        be.prefetch(doc, axis, index)
        h, w = img.shape
        headers = {"X-Shape": f"{h},{w}", "X-Encoded": str(doc.embed_key(axis, index) in be.cache).lower()}
        data = img.astype("<f4").tobytes() + lab.astype("<u2").tobytes()
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/api/s/{sid}/encoded")
    async def encoded(sid: str, axis: str = "z", index: int = 0):
        doc = be.store.get(sid).doc
        axis, index = doc.check_plane(axis, index)
        return {"encoded": doc.embed_key(axis, index) in be.cache}

    @app.post("/api/s/{sid}/prompt")
    async def prompt(sid: str, request: Request):
        body = await _body(request)
        entry = be.store.get(sid)
        axis, index = _plane(body)
        kind, value = body.get("kind"), body.get("value")
        if kind in ("click", "box") and not isinstance(value, list):
            raise AppError(400, f"a {kind} needs a list of coordinates")
        async with entry.lock:
            t = time.perf_counter()
            quality = await be.run(entry.doc.prompt, axis, index, kind, value)
            ms = 1000 * (time.perf_counter() - t)
            out = be.state(entry) | {"plane": be.plane_json(entry.doc, axis, index)}
        return out | {"quality": quality, "server_ms": round(ms, 1)}

    @app.post("/api/s/{sid}/history")
    async def history(sid: str, request: Request):
        body = await _body(request)
        entry = be.store.get(sid)
        axis, index = _plane(body)
        async with entry.lock:
            await be.run(entry.doc.history_op, str(body.get("op")))
            return be.state(entry) | {"plane": be.plane_json(entry.doc, axis, index)}

    @app.get("/api/s/{sid}/render3d")
    async def render3d(sid: str, azimuth: float = 0.0, elevation: float = 20.0, size: int = 384):
        entry = be.store.get(sid)
        async with entry.lock:
            png = await be.run(render_view, entry.doc, azimuth, elevation, size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/s/{sid}/export")
    async def export(sid: str, fmt: str = "nii.gz"):
        entry = be.store.get(sid)
        async with entry.lock:
            path = await be.run(write_export, entry.doc, fmt, be.workdir)
        cleanup = BackgroundTask(shutil.rmtree, path.parent, ignore_errors=True)
        return FileResponse(path, filename=path.name, background=cleanup)

    @app.post("/api/s/{sid}/import")
    async def import_labels(sid: str, request: Request, name: str = ""):
        entry = be.store.get(sid)
        fname = safe_filename(name)
        folder = Path(tempfile.mkdtemp(prefix="import-", dir=be.workdir))
        try:
            await save_upload(request.stream(), _content_length(request), be.upload_limit, folder / fname)
            data = await be.run(open_path, folder / fname, be.upload_limit, folder)
            async with entry.lock:
                await be.run(entry.doc.import_labels, data, fname)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return be.state(entry)


def _routes_objects(app: FastAPI, be: Backend) -> None:
    @app.post("/api/s/{sid}/objects")
    async def objects(sid: str, request: Request):
        body = await _body(request)
        entry = be.store.get(sid)
        doc = entry.doc
        axis, index = _plane(body)
        op = body.get("op")
        async with entry.lock:
            if op == "next":
                doc.next_object(body.get("name"))
            elif op in ("select", "update", "delete"):
                try:
                    label = int(body.get("label"))
                except (TypeError, ValueError):
                    raise AppError(400, "objects: 'label' must be an integer") from None
                if op == "select":
                    doc.select(label)
                elif op == "update":
                    doc.update_object(label, body.get("name"), body.get("color"), body.get("visible"))
                else:
                    await be.run(doc.delete_object, label)
            else:
                raise AppError(400, f"objects: unknown op {op!r} (next, select, update, delete)")
            return be.state(entry) | {"plane": be.plane_json(doc, axis, index)}

    @app.post("/api/s/{sid}/propagate")
    async def start_propagation(sid: str, request: Request):
        body = await _body(request)
        entry = be.store.get(sid)
        axis, index = _plane(body)
        if entry.job and entry.job.get("running"):
            raise AppError(409, "a propagation is already running")
        entry.doc.check_plane(axis, index)
        max_slices = body.get("max_slices")
        if max_slices is not None and (not isinstance(max_slices, int) or not 1 <= max_slices <= 2000):
            raise AppError(
                400, "max_slices: an integer from 1 to 2000 (slices each way), or null for no limit"
            )
        entry.job = {"running": True, "done": 0, "total": 0, "filled": 0, "error": None}
        asyncio.get_running_loop().create_task(_propagate(be, entry, axis, index, max_slices))
        return {"job": entry.job}

    @app.get("/api/s/{sid}/progress")
    async def progress(sid: str):
        return {"job": be.store.get(sid).job}


async def _propagate(be: Backend, entry, axis: str, index: int, max_slices: int | None) -> None:
    job = entry.job

    def report(done: int, total: int) -> None:
        job["done"], job["total"] = done, total

    async with entry.lock:
        try:
            job["filled"] = await be.run(entry.doc.propagate, axis, index, max_slices, report)
        except (ImisError, AppError) as exc:
            job["error"] = str(exc)
        except Exception as exc:  # reported in the page; the server carries on
            job["error"] = f"propagation failed: {type(exc).__name__}: {exc}"
        finally:
            job["running"] = False


def render_view(doc, azimuth: float, elevation: float, size: int) -> bytes:
    """The 3D view of the document's label map (visible objects in their colours) as PNG bytes."""
    if doc.is_2d:
        raise AppError(400, "the 3D view needs a volume; this is a 2D image")
    if not (np.isfinite(azimuth) and np.isfinite(elevation)):
        raise AppError(400, "azimuth/elevation: finite angles in degrees")
    geo = doc.data.geometry
    colors = {o.label: o.color for o in doc.objects if o.visible}
    img = render(doc.export_labels(), geo.spacing, geo.direction_matrix, colors, azimuth, elevation, size)
    return png_bytes(img)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def check_config(config: ServeConfig) -> None:
    if config.data_dir is not None and not config.data_dir.is_dir():
        raise InputError(f"{config.data_dir}: DATA_DIR is not a folder")


def runtime_label(backend: str, dtype) -> str:
    """What the page shows of the runtime: "torch fp32", "torch bf16", "onnx int8"..."""
    if dtype is None:
        return f"{backend} fp32"
    name = str(dtype).removeprefix("torch.")
    return f"{backend} {'int8' if name == 'qint8' else name.replace('bfloat16', 'bf16')}"


def serve(config: ServeConfig, host: str, port: int, model) -> int:
    """Print the address and run uvicorn with `model` (loaded by the CLI) until interrupted."""
    import uvicorn

    check_config(config)
    if not config.token and not is_loopback(host):
        config.token = secrets.token_urlsafe(16)
        print(f"imis serve: host {host} is not loopback, so a token is required; generated one.")
    app = create_app(config, model)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack (diagnosing a stuck server)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    query = f"/?token={config.token}" if config.token else "/"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(
        f"imis serve: model {model.name} ({model.license}, {config.runtime}); open http://{shown}:{port}{query}",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
