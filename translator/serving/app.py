"""The FastAPI app: routes of TF Serving's REST API, /v1/translate, /v1/attention, /v1/info,
/health, and the web page (`page`).

`create_app` loads the export base directory into a `ModelRepository` kept in `app.state`
(with the `ServeSettings`), starts the version poller for the app's lifetime and installs the
routes of `router` and `page.router`, which read both from `request.app.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from translator.errors import ModelDirError
from translator.export.layout import (
    ATTENTION_SIGNATURE,
    DEFAULT_SIGNATURE,
    NoDecoderError,
    is_version_name,
    pick_decoder,
)
from translator.serving import page, rest
from translator.serving.repository import ModelRepository, ServedVersion
from translator.serving.rest import (
    ApiError,
    AttentionRequest,
    AttentionResponse,
    ServerInfo,
    TranslateRequest,
    TranslateResponse,
)
from translator.serving.settings import ServeSettings

log = logging.getLogger(__name__)

router = APIRouter()


def create_app(directory: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving the export base directory `directory`.

    Raises:
        ModelDirError: the directory holds no loadable version.
    """
    settings = settings or ServeSettings()
    base = Path(directory)
    if not base.is_dir():
        raise ModelDirError(f"export directory not found: {base}")
    if (base / "saved_model.pb").is_file():
        raise ModelDirError(
            f"{base} is a version directory; serve its parent (the export base directory)"
        )
    name = settings.model_name or base.resolve().name
    repo = ModelRepository(base, name, settings.keep_versions)
    repo.refresh()
    if not repo.versions:
        raise ModelDirError(f"no loadable export version in {base} (expected {base}/<N>/)")

    app = FastAPI(
        title="translator",
        description="TensorFlow Serving's REST API for a translator export, plus /v1/translate.",
        lifespan=_poll_for_versions,
    )
    app.state.repository = repo
    app.state.settings = settings
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)
    page.files()  # read the web page's files now: no request opens a file
    app.include_router(router)
    app.include_router(page.router)
    return app


@contextlib.asynccontextmanager
async def _poll_for_versions(app: FastAPI):
    """While the app runs, loads new versions from disk every `poll_seconds`."""
    repo: ModelRepository = app.state.repository

    async def poll() -> None:
        while True:
            await asyncio.sleep(app.state.settings.poll_seconds)
            try:
                await asyncio.to_thread(repo.refresh)
            except Exception:  # keep polling whatever the disk does
                log.exception("refreshing %s failed", repo.base)

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        task.cancel()


# -- errors as {"error": message} --------------------------------------------------------------


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail
    if exc.status_code == 404:
        message = f"Malformed request: {request.method} {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": str(exc.errors()[:1])}, status_code=400)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s: %r", request.url.path, exc)
    return JSONResponse({"error": "internal server error"}, status_code=500)


# -- TF Serving's REST API ---------------------------------------------------------------------


def _served_version(request: Request, model: str, version: str | None) -> ServedVersion:
    """The loaded version a URL names; ApiError 404 for any other model or version."""
    repo: ModelRepository = request.app.state.repository
    if model != repo.name:
        what = "Latest" if version is None else "Specific"
        which = model if version is None else f"{model}, {version}"
        raise ApiError(404, f"Servable not found for request: {what}({which})")
    if version is not None and not is_version_name(version):
        raise ApiError(404, f"Malformed request: version '{version}' is not a number")
    return repo.get(None if version is None else int(version))


async def _predict(request: Request, model: str, version: str | None) -> dict:
    served = _served_version(request, model, version)
    settings: ServeSettings = request.app.state.settings
    body = await rest.read_json(request, settings.max_body_bytes)
    spec = rest.predict_signature(body, served.specs)
    values, fmt = rest.predict_inputs(body, spec, settings)
    split = rest.predict_split(body)
    if values is None:
        return rest.predict_response(await asyncio.to_thread(served.call, spec.name), fmt)
    batcher = served.batcher(spec.name, settings)
    if spec.name in served.decoders:  # a translating signature: split into sentences
        rows = await served.translate_rows(batcher, values, split)
    else:
        rows = await batcher.submit(values)
    return rest.predict_response(rows, fmt)


def _status(request: Request, model: str, version: str | None) -> dict:
    repo: ModelRepository = request.app.state.repository
    if model != repo.name:
        raise ApiError(404, f"Could not find any versions of model {model}")
    if version is not None and (not is_version_name(version) or int(version) not in repo.versions):
        raise ApiError(404, f"Could not find version {version} of model {model}")
    shown = [int(version)] if version is not None else sorted(repo.versions, reverse=True)
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in shown
        ]
    }


def _metadata(request: Request, model: str, version: str | None) -> dict:
    served = _served_version(request, model, version)
    name = request.app.state.repository.name
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
        "metadata": {"signature_def": {"signature_def": served.metadata}},
    }


_PREDICT_DOC = rest.body_doc(rest.PredictRequest)


@router.post("/v1/models/{model}:predict", openapi_extra=_PREDICT_DOC, tags=["tf-serving"])
async def predict_latest(model: str, request: Request) -> dict:
    """TF Serving predict on the highest version."""
    return await _predict(request, model, None)


@router.post(
    "/v1/models/{model}/versions/{version}:predict",
    openapi_extra=_PREDICT_DOC,
    tags=["tf-serving"],
)
async def predict_version(model: str, version: str, request: Request) -> dict:
    """TF Serving predict on a given version."""
    return await _predict(request, model, version)


@router.get("/v1/models/{model}", tags=["tf-serving"])
async def status_latest(model: str, request: Request) -> dict:
    """TF Serving model status (every loaded version)."""
    return _status(request, model, None)


@router.get("/v1/models/{model}/versions/{version}", tags=["tf-serving"])
async def status_version(model: str, version: str, request: Request) -> dict:
    """TF Serving model status of one version."""
    return _status(request, model, version)


@router.get("/v1/models/{model}/metadata", tags=["tf-serving"])
async def metadata_latest(model: str, request: Request) -> dict:
    """TF Serving metadata (signature defs) of the highest version."""
    return _metadata(request, model, None)


@router.get("/v1/models/{model}/versions/{version}/metadata", tags=["tf-serving"])
async def metadata_version(model: str, version: str, request: Request) -> dict:
    """TF Serving metadata (signature defs) of one version."""
    return _metadata(request, model, version)


# -- /v1/translate and /health ---------------------------------------------------------------


@router.post(
    "/v1/translate", response_model=TranslateResponse, openapi_extra=rest.body_doc(TranslateRequest)
)
async def translate(request: Request) -> TranslateResponse:
    """Translates `text` with the highest version; `beam_size` must be one of the export's
    (1, the config default or the export's beam signature). Each text is cut into sentences
    and their translations joined unless `split` is false (default: the export's
    decode.split)."""
    settings: ServeSettings = request.app.state.settings
    repo: ModelRepository = request.app.state.repository
    body = await rest.read_json(request, settings.max_body_bytes)
    req, texts = rest.translate_request(body, settings)
    served = repo.get(None)
    try:
        signature = pick_decoder(served.decoders, req.beam_size, req.n_best)
    except NoDecoderError as exc:
        raise ApiError(400, str(exc)) from None
    batcher = served.decoder_batcher(signature, settings)
    rows = await served.translate_rows(batcher, texts, req.split)
    return TranslateResponse(
        model=repo.name,
        version=str(served.version),
        beam_size=served.decoders[signature].beam_size,
        translations=rest.translations(rows, req.n_best),
    )


@router.post(
    "/v1/attention",
    response_model=AttentionResponse,
    openapi_extra=rest.body_doc(AttentionRequest),
)
async def attention(request: Request) -> AttentionResponse:
    """The attention weights [target, source] of an attention model while it translates one
    sentence greedily, with both sides' pieces (400 for a model without attention)."""
    settings: ServeSettings = request.app.state.settings
    repo: ModelRepository = request.app.state.repository
    body = await rest.read_json(request, settings.max_body_bytes)
    text = rest.attention_request(body, settings)
    served = repo.get(None)
    if ATTENTION_SIGNATURE not in served.specs:
        raise ApiError(
            400,
            "this model has no attention to show: it was trained with model.attention none "
            "(or exported before exports carried attention)",
        )
    (row,) = await served.batcher(ATTENTION_SIGNATURE, settings).submit([text])
    return AttentionResponse(
        model=repo.name, version=str(served.version), **rest.attention_response(row)
    )


@router.get("/v1/info", response_model=ServerInfo)
async def info(request: Request) -> ServerInfo:
    """What the served version offers: languages, beam sizes, attention, request limits."""
    settings: ServeSettings = request.app.state.settings
    repo: ModelRepository = request.app.state.repository
    served = repo.get(None)
    default = served.decoders.get(DEFAULT_SIGNATURE)

    def text(key: str) -> str | None:
        value = served.info.get(key)
        return value if isinstance(value, str) else None

    return ServerInfo(
        model=repo.name,
        version=str(served.version),
        source_lang=text("source_lang"),
        target_lang=text("target_lang"),
        beam_sizes=sorted({options.beam_size for options in served.decoders.values()}),
        default_beam_size=default.beam_size if default else None,
        attention=ATTENTION_SIGNATURE in served.specs,
        max_sentences=settings.max_sentences,
        max_chars=settings.max_chars,
    )


@router.get("/health")
async def health(request: Request) -> dict:
    """Liveness and what is loaded, with per-signature batching statistics and queue depth."""
    repo: ModelRepository = request.app.state.repository
    versions = repo.versions
    return {
        "status": "ok" if versions else "unavailable",
        "model": repo.name,
        "versions": sorted(versions),
        "batching": {
            str(v): {
                s: {**b.stats.__dict__, "queued": b.queued} for s, b in served.batchers.items()
            }
            for v, served in versions.items()
        },
    }
