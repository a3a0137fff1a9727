"""HTTP server for an export: TensorFlow Serving's REST API, plus `/v1/translate` and `/health`.

`serve("saved_models/NAME")` serves the export base directory as model NAME (FastAPI on
uvicorn, 127.0.0.1:8501 by default):

- `POST /v1/models/NAME[/versions/N]:predict`: row (`instances`) or columnar (`inputs`)
  requests with an optional `signature_name`; answers `{"predictions": ...}` or
  `{"outputs": ...}` as TF Serving does. String inputs may also be `{"b64": ...}`.
- `GET /v1/models/NAME[/versions/N]` (version status) and `.../metadata` (signature defs).
- `POST /v1/translate` (`{"text": [...], "beam_size": k, "n_best": n}`), `GET /health`,
  `GET /openapi.json` and `/docs`.

Versions: the highest complete version on disk is served (`keep_versions` of the newest stay
loaded); a poller loads a newly exported version in the background, warms it up and only then
swaps it in, so no request waits and no restart is needed. Concurrent requests go through a
dynamic batcher per signature (up to `max_batch_size` sentences, waiting at most `max_wait_ms`
for the first sentence's companions). Client mistakes get a 4xx `{"error": ...}`, never a 5xx;
URLs never name files (model names and versions are looked up among the loaded ones), and
nothing but the SavedModel itself (protobuf graph and variables) is read: no pickle, no code.
Non-finite scores (empty n-best slots) are sent as null, since JSON has no -Infinity.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from translator.errors import ConfigError, ModelDirError
from translator.export.layout import is_version_name, list_versions

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
DRAIN_SECONDS = 30.0  # how long requests in flight may take to finish after SIGTERM/SIGINT


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and batching; every field has a `translator serve` flag."""

    model_name: str | None = None  # URL name of the model; default: the directory's name
    max_body_bytes: int = 1 << 20  # 413 above this
    max_sentences: int = 64  # sentences per request
    max_chars: int = 1000  # characters per sentence
    max_batch_size: int = 32  # sentences per model call (dynamic batching)
    max_wait_ms: float = 5.0  # how long the first sentence of a batch waits for others
    poll_seconds: float = 2.0  # how often the directory is checked for new versions
    keep_versions: int = 1  # newest versions kept loaded (TF Serving's "latest" policy)

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_sentences", "max_chars", "max_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve setting '{key}' must be >= 1, got {getattr(self, key)}")
        if self.keep_versions < 1:
            raise ConfigError(
                f"serve setting 'keep_versions' must be >= 1, got {self.keep_versions}"
            )
        if self.max_wait_ms < 0 or self.poll_seconds <= 0:
            raise ConfigError("serve settings need max_wait_ms >= 0 and poll_seconds > 0")


class ApiError(Exception):
    """A request the server refuses; becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- dynamic batching ------------------------------------------------------------------------


@dataclass
class _Item:
    value: str
    future: asyncio.Future
    enqueued: float


@dataclass
class BatchStats:
    """What a batcher did (exposed on /health, used by tests and benchmarks)."""

    batches: int = 0
    sentences: int = 0
    largest: int = 0


class Batcher:
    """Collects sentences from concurrent requests into one model call.

    A batch is sent when it holds `max_batch_size` sentences or when its oldest sentence has
    waited `max_wait_s`; while the model runs (in a worker thread) new sentences queue up and
    form the next batch. One batch per signature is in flight at a time.
    """

    def __init__(
        self,
        run: Callable[[list[str]], dict[str, np.ndarray]],
        max_batch_size: int,
        max_wait_s: float,
    ):
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._items: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        """Sentences waiting for a model call (not counting the batch being run)."""
        return len(self._items)

    async def submit(self, values: list[str]) -> list[dict[str, Any]]:
        """The output rows for `values`, in order."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(v, loop.create_future(), now) for v in values]
        self._items.extend(items)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._items:
            while len(self._items) < self.max_batch_size:
                remaining = self._items[0].enqueued + self.max_wait_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch: list[_Item] = []
            while self._items and len(batch) < self.max_batch_size:
                item = self._items.popleft()
                if not item.future.done():  # skip sentences of cancelled requests
                    batch.append(item)
            if not batch:
                continue
            try:
                outputs = await asyncio.to_thread(self._run, [item.value for item in batch])
            except Exception as exc:  # a server fault: every waiting request gets a 500
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.sentences += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result({k: v[row] for k, v in outputs.items()})


# -- loaded versions -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureSpec:
    """Names, dtypes and shapes of one signature (from the SavedModel's signature_def)."""

    name: str
    inputs: dict[str, tuple[str, tuple[int, ...] | None]]
    outputs: dict[str, tuple[str, tuple[int, ...] | None]]

    @property
    def batched_text(self) -> bool:
        """One string [batch] input and outputs that all start with the batch dimension."""
        if len(self.inputs) != 1:
            return False
        dtype, shape = next(iter(self.inputs.values()))
        return (
            dtype == "DT_STRING"
            and shape == (-1,)
            and all(s is not None and len(s) >= 1 for _, s in self.outputs.values())
        )


def _tensor_specs(infos) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415

    specs = {}
    for key, info in infos.items():
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
        specs[key] = (types_pb2.DataType.Name(info.dtype), dims)
    return specs


@dataclass
class ServedVersion:
    """One loaded version: the SavedModel, its signatures, model_info and batchers."""

    version: int
    path: Path
    loaded: Any
    specs: dict[str, SignatureSpec]
    metadata: dict[str, Any]
    info: dict[str, Any]
    decoders: dict[str, dict[str, Any]]
    batchers: dict[str, Batcher] = field(default_factory=dict)

    def call(self, signature: str, values: list[str] | None = None) -> dict[str, np.ndarray]:
        """Runs a signature synchronously (in the calling thread)."""
        import tensorflow as tf  # noqa: PLC0415

        spec = self.specs[signature]
        kwargs = {}
        if values is not None:
            kwargs[next(iter(spec.inputs))] = tf.constant(values, tf.string)
        out = self.loaded.signatures[signature](**kwargs)
        return {k: v.numpy() for k, v in out.items()}

    def batcher(self, signature: str, settings: ServeSettings) -> Batcher:
        if signature not in self.batchers:
            self.batchers[signature] = Batcher(
                lambda values: self.call(signature, values),
                settings.max_batch_size,
                settings.max_wait_ms / 1000.0,
            )
        return self.batchers[signature]


def load_version(path: Path, version: int) -> ServedVersion:
    """Loads and warms up one version directory."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_text  # noqa: F401, PLC0415  (registers the SentencePiece ops)
    from google.protobuf import json_format  # noqa: PLC0415
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    signature_defs = {
        name: sig
        for name, sig in proto.meta_graphs[0].signature_def.items()
        if not name.startswith("__")
    }
    specs = {
        name: SignatureSpec(name, _tensor_specs(sig.inputs), _tensor_specs(sig.outputs))
        for name, sig in signature_defs.items()
    }
    metadata = {
        name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
        for name, sig in signature_defs.items()
    }
    loaded = tf.saved_model.load(str(path))
    served = ServedVersion(version, path, loaded, specs, metadata, {}, {})
    if "model_info" in specs and not specs["model_info"].inputs:
        served.info = {k: _plain(v) for k, v in served.call("model_info").items()}
        with contextlib.suppress(ValueError, TypeError):
            served.decoders = json.loads(served.info.get("decoders", "{}"))
    for name, spec in specs.items():  # the first call of a function is slow: pay it now
        if spec.batched_text:
            served.call(name, ["warm up"])
    return served


class ModelRepository:
    """The versions of one export base directory, refreshed from disk."""

    def __init__(self, base: str | Path, name: str, keep_versions: int = 1):
        self.base = Path(base)
        self.name = name
        self.keep_versions = keep_versions
        self._versions: dict[int, ServedVersion] = {}
        self._failed: dict[int, float] = {}  # version -> mtime of the saved_model.pb that failed
        self._lock = threading.Lock()

    @property
    def versions(self) -> dict[int, ServedVersion]:
        """The loaded versions by number."""
        return self._versions  # replaced as a whole, never mutated: safe to read anywhere

    def get(self, version: int | None) -> ServedVersion:
        """The given loaded version, or the highest one for None; ApiError 404 if absent."""
        versions = self._versions
        if version is None:
            if not versions:
                raise ApiError(404, f"Servable not found for request: Latest({self.name})")
            return versions[max(versions)]
        if version not in versions:
            raise ApiError(404, f"Servable not found for request: Specific({self.name}, {version})")
        return versions[version]

    def refresh(self) -> list[int]:
        """Loads the newest versions on disk and drops older ones; returns newly loaded ones.

        A version that fails to load is skipped (and logged) until its files change, and the
        versions already loaded stay served.
        """
        with self._lock:
            root = self.base.resolve()
            candidates = []
            for version in reversed(list_versions(self.base)):
                path = self.base / str(version)
                if root not in path.resolve().parents:  # a symlink out of the model directory
                    continue
                mtime = (path / "saved_model.pb").stat().st_mtime
                if self._failed.get(version) == mtime:
                    continue
                candidates.append((version, path, mtime))
            current = dict(self._versions)
            wanted, loaded = [], []
            for version, path, mtime in candidates:
                if len(wanted) == self.keep_versions:
                    break
                if version not in current:
                    try:
                        current[version] = load_version(path, version)
                        loaded.append(version)
                        log.info("loaded %s version %d from %s", self.name, version, path)
                    except Exception as exc:  # any broken export must not stop the server
                        log.error("cannot load %s: %s", path, exc)
                        self._failed[version] = mtime
                        continue
                wanted.append(version)
            if wanted:
                self._versions = {v: current[v] for v in sorted(wanted)}
            return loaded


def _plain(value: Any) -> Any:
    """A numpy value as JSON-ready Python (bytes as UTF-8 text, non-finite floats as None)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- request parsing -------------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing oversized bodies, invalid UTF-8 and bad JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body too large: {length} bytes, the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body too large: over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"JSON Parse error: {exc}") from None


def _text(value: Any, where: str, settings: ServeSettings) -> str:
    """One string input: a JSON string or {"b64": ...}, valid UTF-8, within the length limit."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            value = base64.b64decode(value["b64"], validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: b64 value is not valid base64 of UTF-8 text") from None
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: expected a string, got {_json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{where}: not valid UTF-8 (unpaired surrogate)") from None
    if len(value) > settings.max_chars:
        raise ApiError(
            400, f"{where} has {len(value)} characters, the limit is {settings.max_chars}"
        )
    return value


def _texts(values: Any, where: str, settings: ServeSettings) -> list[str]:
    if not isinstance(values, list):
        raise ApiError(400, f"'{where}' must be a list of strings, got {_json_type(values)}")
    if len(values) > settings.max_sentences:
        raise ApiError(
            400, f"too many sentences: {len(values)}, the limit is {settings.max_sentences}"
        )
    return [_text(v, f"{where}[{i}]", settings) for i, v in enumerate(values)]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _predict_inputs(
    body: Any, spec: SignatureSpec, settings: ServeSettings
) -> tuple[list[str] | None, str]:
    """The sentences of a predict request and its format ("row" or "columnar")."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    if "instances" in body and "inputs" in body:
        raise ApiError(400, "request has both 'instances' and 'inputs'; send exactly one")
    if not spec.inputs:
        given = body.get("instances", body.get("inputs"))
        if given not in (None, [], {}):
            raise ApiError(400, f"signature '{spec.name}' takes no inputs")
        return None, "columnar"
    if not spec.batched_text:
        raise ApiError(400, f"signature '{spec.name}' is not supported by this server")
    (name,) = spec.inputs
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ApiError(400, f"'instances' must be a list, got {_json_type(instances)}")
        rows = []
        for i, instance in enumerate(instances):
            if isinstance(instance, dict) and set(instance) != {"b64"}:
                if set(instance) != {name}:
                    raise ApiError(
                        400,
                        f"instances[{i}]: expected exactly the input '{name}', "
                        f"got {sorted(instance)}",
                    )
                instance = instance[name]
            rows.append(instance)
        return _texts(rows, "instances", settings), "row"
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            if set(inputs) != {name}:
                raise ApiError(400, f"'inputs' must hold exactly '{name}', got {sorted(inputs)}")
            inputs = inputs[name]
        return _texts(inputs, "inputs", settings), "columnar"
    raise ApiError(400, "request must have 'instances' (row format) or 'inputs' (columnar)")


def _predict_response(rows: list[dict[str, Any]] | dict[str, Any], fmt: str) -> dict:
    if fmt == "row":
        if rows and len(rows[0]) == 1:
            return {"predictions": [_plain(next(iter(r.values()))) for r in rows]}
        return {"predictions": [{k: _plain(v) for k, v in r.items()} for r in rows]}
    if isinstance(rows, dict):  # an unbatched signature's outputs
        columns = rows
    else:
        keys = rows[0].keys() if rows else ()
        columns = {k: [r[k] for r in rows] for k in keys}
    if len(columns) == 1:
        return {"outputs": _plain(next(iter(columns.values())))}
    return {"outputs": {k: _plain(v) for k, v in columns.items()}}


# -- /v1/translate schema ---------------------------------------------------------------------


class TranslateRequest(BaseModel):
    """Body of POST /v1/translate."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: list[str]
    beam_size: int | None = None  # None = the export's default decoding; else an exported beam
    n_best: int = 1


class Hypothesis(BaseModel):
    """One of the n best translations of a sentence."""

    text: str
    score: float | None


class Translation(BaseModel):
    """The best translation of one input (empty for a blank input) and its score."""

    text: str
    score: float | None
    hypotheses: list[Hypothesis] | None = None  # with n_best > 1, best first


class TranslateResponse(BaseModel):
    """Response of POST /v1/translate: one translation per input text, in order."""

    model: str
    version: str
    beam_size: int
    translations: list[Translation]


class PredictRequest(BaseModel):
    """TF Serving predict body (documentation only: bodies are parsed by hand)."""

    signature_name: str | None = None
    instances: list[Any] | None = None
    inputs: Any = None


def _body_doc(model: type[BaseModel]) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _pick_decoder(served: ServedVersion, beam_size: int | None, n_best: int) -> tuple[str, dict]:
    """The signature decoding with `beam_size` (None: serving_default) and >= n_best outputs."""
    decoders = served.decoders
    if not decoders:
        raise ApiError(400, "this model has no translator decoders (model_info is missing)")
    if beam_size is None:
        name = "serving_default"
        options = decoders[name]
    else:
        matches = [
            (name, o)
            for name, o in decoders.items()
            if o["beam_size"] == beam_size and o["n_best"] >= n_best
        ]
        if not matches:
            sizes = sorted({o["beam_size"] for o in decoders.values()})
            if beam_size not in sizes:
                raise ApiError(
                    400, f"beam_size {beam_size} is not available; this export has {sizes}"
                )
            most = max(o["n_best"] for o in decoders.values() if o["beam_size"] == beam_size)
            raise ApiError(400, f"n_best {n_best} is above {most} for beam_size {beam_size}")
        name, options = min(matches, key=lambda m: m[1]["n_best"])
    if n_best > options["n_best"]:
        raise ApiError(400, f"n_best {n_best} is above {options['n_best']} for this beam size")
    return name, options


# -- the app ---------------------------------------------------------------------------------


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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def poll() -> None:
            while True:
                await asyncio.sleep(settings.poll_seconds)
                try:
                    await asyncio.to_thread(repo.refresh)
                except Exception:  # keep polling whatever the disk does
                    log.exception("refreshing %s failed", base)

        task = asyncio.create_task(poll())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="translator",
        description="TensorFlow Serving's REST API for a translator export, plus /v1/translate.",
        lifespan=lifespan,
    )
    app.state.repository = repo
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail
        if exc.status_code == 404:
            message = f"Malformed request: {request.method} {request.url.path}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": str(exc.errors()[:1])}, status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %r", request.url.path, exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    def served_version(model: str, version: str | None) -> ServedVersion:
        if model != name:
            what = "Latest" if version is None else "Specific"
            which = model if version is None else f"{model}, {version}"
            raise ApiError(404, f"Servable not found for request: {what}({which})")
        if version is not None and not is_version_name(version):
            raise ApiError(404, f"Malformed request: version '{version}' is not a number")
        return repo.get(None if version is None else int(version))

    async def predict(model: str, version: str | None, request: Request) -> dict:
        served = served_version(model, version)
        body = await _read_json(request, settings.max_body_bytes)
        signature = body.get("signature_name", "serving_default") if isinstance(body, dict) else ""
        if not isinstance(signature, str):
            raise ApiError(400, "'signature_name' must be a string")
        signature = signature or "serving_default"
        if signature not in served.specs:
            raise ApiError(400, f'Serving signature name: "{signature}" not found in signature def')
        spec = served.specs[signature]
        values, fmt = _predict_inputs(body, spec, settings)
        if values is None:
            return _predict_response(await asyncio.to_thread(served.call, signature), fmt)
        rows = await served.batcher(signature, settings).submit(values)
        return _predict_response(rows, fmt)

    def status(model: str, version: str | None) -> dict:
        if model != name:
            raise ApiError(404, f"Could not find any versions of model {model}")
        if version is not None and (
            not is_version_name(version) or int(version) not in repo.versions
        ):
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

    def metadata(model: str, version: str | None) -> dict:
        served = served_version(model, version)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
            "metadata": {"signature_def": {"signature_def": served.metadata}},
        }

    predict_doc = _body_doc(PredictRequest)

    @app.post("/v1/models/{model}:predict", openapi_extra=predict_doc, tags=["tf-serving"])
    async def predict_latest(model: str, request: Request) -> dict:
        """TF Serving predict on the highest version."""
        return await predict(model, None, request)

    @app.post(
        "/v1/models/{model}/versions/{version}:predict",
        openapi_extra=predict_doc,
        tags=["tf-serving"],
    )
    async def predict_version(model: str, version: str, request: Request) -> dict:
        """TF Serving predict on a given version."""
        return await predict(model, version, request)

    @app.get("/v1/models/{model}", tags=["tf-serving"])
    async def status_latest(model: str) -> dict:
        """TF Serving model status (every loaded version)."""
        return status(model, None)

    @app.get("/v1/models/{model}/versions/{version}", tags=["tf-serving"])
    async def status_version(model: str, version: str) -> dict:
        """TF Serving model status of one version."""
        return status(model, version)

    @app.get("/v1/models/{model}/metadata", tags=["tf-serving"])
    async def metadata_latest(model: str) -> dict:
        """TF Serving metadata (signature defs) of the highest version."""
        return metadata(model, None)

    @app.get("/v1/models/{model}/versions/{version}/metadata", tags=["tf-serving"])
    async def metadata_version(model: str, version: str) -> dict:
        """TF Serving metadata (signature defs) of one version."""
        return metadata(model, version)

    @app.post(
        "/v1/translate", response_model=TranslateResponse, openapi_extra=_body_doc(TranslateRequest)
    )
    async def translate(request: Request) -> TranslateResponse:
        """Translates `text` with the highest version; `beam_size` must be one of the export's
        (1, the config default or the export's beam signature)."""
        body = await _read_json(request, settings.max_body_bytes)
        try:
            req = TranslateRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(400, f"invalid request: {where}: {first['msg']}") from None
        texts = _texts(req.text, "text", settings)
        if req.beam_size is not None and req.beam_size < 1:
            raise ApiError(400, f"beam_size must be >= 1, got {req.beam_size}")
        if req.n_best < 1:
            raise ApiError(400, f"n_best must be >= 1, got {req.n_best}")
        served = repo.get(None)
        signature, options = _pick_decoder(served, req.beam_size, req.n_best)
        rows = await served.batcher(signature, settings).submit(texts)
        translations = []
        for row in rows:
            if "translations" in row:
                hyps = [
                    Hypothesis(text=_plain(t), score=_plain(s))
                    for t, s in zip(row["translations"], row["scores"], strict=True)
                ][: req.n_best]
            else:
                hyps = [Hypothesis(text=_plain(row["translation"]), score=_plain(row["score"]))]
            translations.append(
                Translation(
                    text=hyps[0].text,
                    score=hyps[0].score,
                    hypotheses=hyps if req.n_best > 1 else None,
                )
            )
        return TranslateResponse(
            model=name,
            version=str(served.version),
            beam_size=options["beam_size"],
            translations=translations,
        )

    @app.get("/health")
    async def health() -> dict:
        """Liveness and what is loaded, with per-signature batching statistics and queue depth."""
        versions = repo.versions
        return {
            "status": "ok" if versions else "unavailable",
            "model": name,
            "versions": sorted(versions),
            "batching": {
                str(v): {
                    s: {**b.stats.__dict__, "queued": b.queued} for s, b in served.batchers.items()
                }
                for v, served in versions.items()
            },
        }

    return app


def serve(
    directory: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    access_log: bool = False,
    drain_seconds: float = DRAIN_SECONDS,
    **settings: Any,
) -> int:
    """Serves an export base directory until SIGTERM or SIGINT (see the module docstring).

    The port is bound before the model loads, so a taken port fails at once. On SIGTERM or
    SIGINT (Ctrl-C) the server stops accepting connections, lets the requests in flight finish
    (for at most `drain_seconds`; then they are cancelled) and returns 0; a second Ctrl-C stops
    without waiting.

    Args:
        directory: the export base directory, e.g. `saved_models/NAME`.
        host: interface to bind; loopback by default (nothing else can reach it).
        port: TCP port (0: any free port).
        access_log: log one line per request.
        drain_seconds: how long requests in flight may take to finish after a stop signal.
        **settings: `ServeSettings` fields.

    Raises:
        ConfigError: the address cannot be bound (port taken, unknown host).
        ModelDirError: the directory holds no loadable version.
    """
    import uvicorn  # noqa: PLC0415

    sock = _bind(host, port)
    try:
        app = create_app(directory, ServeSettings(**settings))
        config = uvicorn.Config(
            app,
            access_log=access_log,
            log_level="info",
            # Log through the process's logging setup (the CLI's) instead of uvicorn's own
            # dictConfig, which would also close every handler already installed.
            log_config=None,
            timeout_graceful_shutdown=drain_seconds,
        )
        server = uvicorn.Server(config)
        received: list[int] = []
        with _record_stop_signals(received):
            server.run(sockets=[sock])
    finally:
        sock.close()
    if received:
        log.info("stopped by %s; requests in flight were answered", signal.strsignal(received[0]))
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), ready for uvicorn to listen on."""
    if not 0 <= port <= 65535:  # getaddrinfo would silently take the port modulo 65536
        raise ConfigError(f"cannot listen on {host}:{port}: ports are 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@contextlib.contextmanager
def _record_stop_signals(received: list[int]):
    """Makes SIGTERM and SIGINT only be recorded in `received` while the server runs.

    uvicorn catches both to shut down gracefully, then re-raises the signal it caught into the
    handler that was installed before it started; with the default handlers that would kill the
    process by SIGTERM (or raise KeyboardInterrupt) after a clean drain instead of returning.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread only: nothing to do
        return
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
