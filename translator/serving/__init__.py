"""HTTP server for an export: TensorFlow Serving's REST API, `/v1/translate`, a web page and more.

`serve("saved_models/NAME")` serves the export base directory as model NAME (FastAPI on
uvicorn, 127.0.0.1:8501 by default):

- `POST /v1/models/NAME[/versions/N]:predict`: row (`instances`) or columnar (`inputs`)
  requests with an optional `signature_name`; answers `{"predictions": ...}` or
  `{"outputs": ...}` as TF Serving does. String inputs may also be `{"b64": ...}`.
- `GET /v1/models/NAME[/versions/N]` (version status) and `.../metadata` (signature defs).
- `POST /v1/translate` (`{"text": [...], "beam_size": k, "n_best": n}`): translations with
  their score and confidence (log-probability per output piece, as the Python API's), run
  through each decoder's full decode function; `GET /health`, `GET /openapi.json` and `/docs`.
- `GET /v1/info`: languages, beam sizes, whether the model has attention, request limits.
- `POST /v1/attention` (`{"text": "..."}`), for an attention model's export: the greedy
  translation with its source and target pieces and attention weights [target, source].
- `GET /`: a web page to try the model (`page`: static files, no build step, works offline).

Translating requests (`/v1/translate`, and `:predict` on `serving_default`, `greedy`, `beam`)
cut each input into sentences, and an over-long sentence into chunks, before the model sees
them, and join the translations (`translator.splitting`, `translating.join_rows`), unless the
body says `"split": false` (default: the export's `decode.split`). The export's graph does not
split (the splitter is not a TensorFlow op), so TensorFlow Serving's own binary does not either.

Versions: the highest complete version on disk is served (`keep_versions` of the newest stay
loaded); a poller loads a newly exported version in the background, warms it up and only then
swaps it in, so no request waits and no restart is needed. Concurrent requests go through a
dynamic batcher per signature or decode function: one model call at a time, the next batch
(up to `max_batch_size` sentences, default 32) being what queued while the previous one ran;
with the default `max_wait_ms` 0 a batch starts as soon as the model is free. Client mistakes
get a 4xx `{"error": ...}`, never a 5xx; URLs never name files (model names and versions are
looked up among the loaded ones), and nothing but the SavedModel itself (protobuf graph and
variables) is read: no pickle, no code (the page's files are this package's own, read once at
start-up). Non-finite scores (empty n-best slots) are sent as null, since JSON has no -Infinity.

Modules, one job each: `settings` (ServeSettings), `batching` (the dynamic batcher),
`repository` (loading and refreshing versions), `rest` (request parsing, TF Serving JSON,
schemas, ApiError), `app` (the FastAPI app and its routes), `page` (the web page's routes and
headers), `server` (`serve`: socket, uvicorn, signals). Importing this package imports no
TensorFlow; loading a version does.
"""

from translator.serving.app import create_app
from translator.serving.batching import Batcher, BatchStats
from translator.serving.repository import ModelRepository, ServedVersion, load_version
from translator.serving.rest import (
    ApiError,
    Hypothesis,
    PredictRequest,
    SignatureSpec,
    TranslateRequest,
    TranslateResponse,
    Translation,
)
from translator.serving.server import DEFAULT_HOST, DEFAULT_PORT, DRAIN_SECONDS, serve
from translator.serving.settings import ServeSettings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DRAIN_SECONDS",
    "ApiError",
    "BatchStats",
    "Batcher",
    "Hypothesis",
    "ModelRepository",
    "PredictRequest",
    "ServeSettings",
    "ServedVersion",
    "SignatureSpec",
    "TranslateRequest",
    "TranslateResponse",
    "Translation",
    "create_app",
    "load_version",
    "serve",
]
