"""The REST protocol: TF Serving's predict JSON and /v1/translate's schemas, in and out.

Parses and checks request bodies (size, UTF-8, JSON, row or columnar format, base64 strings,
the request limits) and shapes model outputs into responses. Every client mistake becomes an
`ApiError` with its 4xx status; nothing here touches a model.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from translator.export.layout import DEFAULT_SIGNATURE
from translator.serving.settings import ServeSettings


class ApiError(Exception):
    """A request the server refuses; becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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


def plain(value: Any) -> Any:
    """A numpy value as JSON-ready Python (bytes as UTF-8 text, non-finite floats as None)."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.ndim else plain(value.item())
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- request parsing -------------------------------------------------------------------------


async def read_json(request: Request, limit: int) -> Any:
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


def texts(values: Any, where: str, settings: ServeSettings) -> list[str]:
    """A list of string inputs, each checked as `_text` does, within the sentence limit."""
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


def predict_signature(body: Any, signatures: dict[str, SignatureSpec]) -> SignatureSpec:
    """The signature a predict request names (`signature_name`, default serving_default)."""
    signature = body.get("signature_name", DEFAULT_SIGNATURE) if isinstance(body, dict) else ""
    if not isinstance(signature, str):
        raise ApiError(400, "'signature_name' must be a string")
    signature = signature or DEFAULT_SIGNATURE
    if signature not in signatures:
        raise ApiError(400, f'Serving signature name: "{signature}" not found in signature def')
    return signatures[signature]


def predict_inputs(
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
        return texts(rows, "instances", settings), "row"
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            if set(inputs) != {name}:
                raise ApiError(400, f"'inputs' must hold exactly '{name}', got {sorted(inputs)}")
            inputs = inputs[name]
        return texts(inputs, "inputs", settings), "columnar"
    raise ApiError(400, "request must have 'instances' (row format) or 'inputs' (columnar)")


def predict_split(body: Any) -> bool | None:
    """The optional `split` field of a predict request (this server's extension of TF
    Serving's body: false translates each input whole); None when absent."""
    split = body.get("split") if isinstance(body, dict) else None
    if split is not None and not isinstance(split, bool):
        raise ApiError(400, f"'split' must be true or false, got {_json_type(split)}")
    return split


def predict_response(rows: list[dict[str, Any]] | dict[str, Any], fmt: str) -> dict:
    """TF Serving's answer: `predictions` (row format) or `outputs` (columnar)."""
    if fmt == "row":
        if rows and len(rows[0]) == 1:
            return {"predictions": [plain(next(iter(r.values()))) for r in rows]}
        return {"predictions": [{k: plain(v) for k, v in r.items()} for r in rows]}
    if isinstance(rows, dict):  # an unbatched signature's outputs
        columns = rows
    else:
        keys = rows[0].keys() if rows else ()
        columns = {k: [r[k] for r in rows] for k in keys}
    if len(columns) == 1:
        return {"outputs": plain(next(iter(columns.values())))}
    return {"outputs": {k: plain(v) for k, v in columns.items()}}


# -- /v1/translate schema ---------------------------------------------------------------------


class TranslateRequest(BaseModel):
    """Body of POST /v1/translate."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: list[str]
    beam_size: int | None = None  # None = the export's default decoding; else an exported beam
    n_best: int = 1
    # Cut each text into sentences (and over-long ones into chunks) and join their translations;
    # None = the export's decode.split (on unless it was trained with it off).
    split: bool | None = None


class Hypothesis(BaseModel):
    """One of the n best translations of a sentence."""

    text: str
    score: float | None
    # Log-probability per output piece, end of sentence included, as the Python API's
    # `Hypothesis.confidence`; exp(confidence) is the geometric mean piece probability.
    confidence: float | None = None


class Translation(BaseModel):
    """The best translation of one input (empty for a blank input), its score and confidence."""

    text: str
    score: float | None
    confidence: float | None = None  # as Hypothesis.confidence
    hypotheses: list[Hypothesis] | None = None  # with n_best > 1, best first


class TranslateResponse(BaseModel):
    """Response of POST /v1/translate: one translation per input text, in order."""

    model: str
    version: str
    beam_size: int
    translations: list[Translation]


class AttentionRequest(BaseModel):
    """Body of POST /v1/attention: one sentence."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str


class AttentionResponse(BaseModel):
    """Response of POST /v1/attention: the attention of an attention model while it translates
    `text` greedily (the translation the weights belong to is `translation`)."""

    model: str
    version: str
    translation: str
    source_pieces: list[str]  # SentencePiece pieces of the source, "</s>" last
    target_pieces: list[str]  # pieces of the translation, "</s>" last when it was emitted
    weights: list[list[float]]  # [target, source]: row t while predicting target piece t


class ServerInfo(BaseModel):
    """Response of GET /v1/info: what the served model offers (the web page reads it)."""

    model: str
    version: str
    source_lang: str | None  # from the export's model_info
    target_lang: str | None
    beam_sizes: list[int]  # the beam sizes /v1/translate accepts, ascending
    default_beam_size: int | None  # beam size of the export's default decoding
    attention: bool  # POST /v1/attention is available (an attention model's export)
    max_sentences: int  # limits of a request, per request and per sentence
    max_chars: int


class PredictRequest(BaseModel):
    """TF Serving predict body (documentation only: bodies are parsed by hand)."""

    signature_name: str | None = None
    instances: list[Any] | None = None
    inputs: Any = None
    # This server only: false = translate each input whole (default: the export's decode.split,
    # sentences split and joined); ignored by signatures that do not translate (attention).
    split: bool | None = None


def body_doc(model: type[BaseModel]) -> dict:
    """A route's `openapi_extra` documenting a body that the route parses itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def translate_request(body: Any, settings: ServeSettings) -> tuple[TranslateRequest, list[str]]:
    """The checked /v1/translate request and its texts."""
    req = _validated(TranslateRequest, body)
    values = texts(req.text, "text", settings)
    if req.beam_size is not None and req.beam_size < 1:
        raise ApiError(400, f"beam_size must be >= 1, got {req.beam_size}")
    if req.n_best < 1:
        raise ApiError(400, f"n_best must be >= 1, got {req.n_best}")
    return req, values


def _validated(model: type[BaseModel], body: Any) -> Any:
    """`body` validated as `model`; the first problem as an ApiError 400."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"invalid request: {where}: {first['msg']}") from None


def attention_request(body: Any, settings: ServeSettings) -> str:
    """The checked sentence of a /v1/attention request (non-blank, within the limits)."""
    req = _validated(AttentionRequest, body)
    text = _text(req.text, "text", settings)
    if not text.strip():
        raise ApiError(400, "text is empty: attention needs a sentence")
    return text


def attention_response(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of an `AttentionResponse` from one row of the `attention` signature, its
    padding cut off with `source_length` and `target_length`."""
    src, tgt = int(row["source_length"]), int(row["target_length"])
    return {
        "translation": plain(row["translation"]),
        "source_pieces": plain(row["source_pieces"][:src]),
        "target_pieces": plain(row["target_pieces"][:tgt]),
        "weights": plain(np.asarray(row["weights"], np.float64)[:tgt, :src]),
    }


def translations(rows: list[dict[str, Any]], n_best: int) -> list[Translation]:
    """One `Translation` per output row of a decoder, keeping `n_best` hypotheses.

    A row is a best-only signature's (`translation`, `score`), an n-best signature's
    (`translations`, `scores`) or a decode function's, which adds `log_probs` and `lengths`
    (output pieces, EOS not counted) and so the confidence.
    """
    result = []
    for row in rows:
        if "translations" in row:
            texts, scores = row["translations"], row["scores"]
            confidences = (
                [confidence(p, n) for p, n in zip(row["log_probs"], row["lengths"], strict=True)]
                if "log_probs" in row and "lengths" in row
                else [None] * len(texts)
            )
            hyps = [
                Hypothesis(text=plain(t), score=plain(s), confidence=c)
                for t, s, c in zip(texts, scores, confidences, strict=True)
            ][:n_best]
        else:
            hyps = [Hypothesis(text=plain(row["translation"]), score=plain(row["score"]))]
        best = hyps[0]
        result.append(
            Translation(
                text=best.text,
                score=best.score,
                confidence=best.confidence,
                hypotheses=hyps if n_best > 1 else None,
            )
        )
    return result


def confidence(log_prob: Any, length: Any) -> float | None:
    """Log-probability per output piece, EOS included (the Python API's definition); None
    where there is no hypothesis (log-probability -inf)."""
    return plain(float(log_prob) / (int(length) + 1))
