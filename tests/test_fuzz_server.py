"""Hostile input to the Python API and the HTTP server, and what a model directory may contain.

- `Translator.translate`: user mistakes are a TypeError/ValueError raised before TensorFlow runs
  (no TensorFlow frame in the traceback); any Unicode string translates; huge batches keep their
  order; very long sentences are truncated with a warning (`split=False`), in bounded time.
- The server: schemathesis generates requests from the server's own OpenAPI schema (no 5xx);
  URLs cannot reach files (dot segments, encoded ones, absolute paths, symlinked versions);
  bodies over the limit get 413 without being read; the listening address is checked early.
- Loading a model directory (training output or export) unpickles nothing and runs no code
  from it. What is read, all data: the SavedModel graph (protobuf `saved_model.pb`) and
  variables (TensorFlow tensor bundle), by TensorFlow's C++ readers; the SentencePiece models
  as bytes; `config.yaml` with a YAML SafeLoader; `model_info` and `assets/export.json` as JSON
  (the latter only for people). Training checkpoints are TensorFlow tensor bundles.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hardening import audited, event_path, raw_http, read_response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from test_serving import SETTINGS, running

import translator as translator_package
from translator.api import CHARS_PER_PIECE, Translator
from translator.cli import main
from translator.errors import ConfigError, TranslatorError
from translator.serving import ModelRepository, create_app, load_version


@pytest.fixture(scope="module")
def translator(trained_dir) -> Translator:
    return Translator.load(trained_dir)


@pytest.fixture(scope="module")
def sources(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()


@pytest.fixture(scope="module")
def export_base(tiny_export) -> Path:
    return tiny_export


@pytest.fixture(scope="module")
def server(export_base):
    app = create_app(export_base, SETTINGS)
    with running(app) as client:
        client.port = int(str(client.base_url).rsplit(":", 1)[1])
        yield client


# -- Python API --------------------------------------------------------------------------------


def no_tensorflow_frames(excinfo: pytest.ExceptionInfo) -> bool:
    return not any(
        "tensorflow" in Path(frame.filename).parts
        for frame in traceback.extract_tb(excinfo.value.__traceback__)
    )


@pytest.mark.parametrize(
    ("texts", "kwargs", "error", "match"),
    [
        (42, {}, TypeError, "got int"),
        ({"a": 1}, {}, TypeError, "got dict"),
        ({"a", "b"}, {}, TypeError, "got set"),
        ((t for t in ["a"]), {}, TypeError, "got generator"),
        (np.array(["a", "b"]), {}, TypeError, "got ndarray"),
        (bytearray(b"a"), {}, TypeError, "single bytearray"),
        (["ok", None], {}, TypeError, "item 1 is NoneType"),
        ([["nested"]], {}, TypeError, "item 0 is list"),
        (["ok", "bad \udc80 surrogate"], {}, ValueError, "item 1 is not valid Unicode"),
        (["a"], {"batch_size": -1}, ValueError, "batch_size must be >= 1"),
        (["a"], {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        (["a"], {"batch_size": "8"}, TypeError, "batch_size must be an integer"),
        (["a"], {"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
        (["a"], {"beam_size": 2.5}, TypeError, "beam_size must be an integer, got float"),
        (["a"], {"beam_size": "5"}, TypeError, "beam_size must be an integer, got str"),
        (["a"], {"beam_size": True}, TypeError, "beam_size must be an integer, got bool"),
        (["a"], {"beam_size": -3}, ValueError, "beam_size must be >= 1"),
        (["a"], {"n_best": 1.0}, TypeError, "n_best must be an integer"),
        (["a"], {"length_penalty": float("inf")}, ValueError, "length_penalty"),
        (["a"], {"max_length_ratio": float("nan")}, ValueError, "max_length_ratio"),
    ],
)
def test_user_mistakes_are_clear_errors_before_tensorflow(translator, texts, kwargs, error, match):
    with pytest.raises(error, match=match) as excinfo:
        translator.translate(texts, **kwargs)
    assert no_tensorflow_frames(excinfo), excinfo.getrepr()


def test_numpy_integers_are_accepted_as_options(translator, sources):
    plain = translator.translate(sources[:3], beam_size=2, batch_size=2)
    assert translator.translate(sources[:3], beam_size=np.int64(2), batch_size=np.int32(2)) == plain


UNICODE = st.lists(
    st.text(
        st.one_of(
            st.sampled_from(list("\x00\t\r\n\x0b\x1b\x7f\x85\u200b\u200f\u202e\u2028\ufeff")),
            st.sampled_from(["e\u0301", "\u05e9\u05dc", "\u0627\u0644", "\U0001f600", "da "]),
            st.characters(codec="utf-8"),
        ).map(lambda s: s[:1]),
        max_size=40,
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(texts=UNICODE)
def test_any_unicode_translates_to_one_string_each(translator, texts):
    result = translator.translate(texts, batch_size=4)
    assert len(result) == len(texts) and all(isinstance(r, str) for r in result)
    for text, out in zip(texts, result, strict=True):
        if not text.strip():
            assert out == ""


def test_five_thousand_sentences_keep_their_order(translator, sources):
    unique = sources[:100] + ["", "  "]
    alone = translator.translate(unique)
    texts = [unique[(i * 7) % len(unique)] for i in range(5000)]
    start = time.perf_counter()
    result = translator.translate(texts, batch_size=256)
    seconds = time.perf_counter() - start
    assert result == [alone[(i * 7) % len(unique)] for i in range(5000)]
    print(f"5,000 sentences in {seconds:.1f} s")


def test_very_long_sentences_are_truncated_with_a_warning_in_bounded_time(
    translator, sources, caplog
):
    max_chars = CHARS_PER_PIECE * translator.config.decode.max_source_length
    words = (sources[0] + " ") * 20_000  # ~100,000 known words
    unknown_run = "\u0100" * 1_000_000  # one 1,000,000-character unknown word: ~50 s uncut
    caplog.set_level(logging.WARNING, logger="translator.api")
    start = time.perf_counter()
    # split=False: each input is one sequence (split inputs are chunked instead: test_splitting)
    result = translator.translate([words, unknown_run, sources[1]], split=False)
    seconds = time.perf_counter() - start
    assert all(isinstance(r, str) for r in result)
    assert result[2] == translator.translate([sources[1]])[0]  # neighbours are unaffected
    assert "2 source sentence(s) longer than" in caplog.text
    assert seconds < 20, f"long inputs took {seconds:.1f} s"
    # The character cut only touches sources that are already truncated to max_source_length.
    cut = translator.translate([words[: max_chars + 5000]], split=False)
    assert cut == translator.translate([words], split=False)


# -- server: schema-driven fuzzing -------------------------------------------------------------


@pytest.fixture(scope="module")
def case_strategies(server) -> dict:
    """Request generators from the server's own OpenAPI schema: valid and invalid requests."""
    schema = schemathesis.openapi.from_dict(server.get("/openapi.json").json())
    return {mode: schema.as_strategy(mode) for mode in GenerationMode}


# Drawn through plain hypothesis: schemathesis's pytest plugin reads pytest internals that
# pytest 9 removed (`Function._nodeid`). Each example draws one mode, then one request of it.
@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_schema_fuzzing_never_gets_a_server_error(case_strategies, server, data):
    mode = data.draw(st.sampled_from(sorted(case_strategies, key=str)), label="mode")
    case = data.draw(case_strategies[mode], label="request")
    case.call_and_validate(base_url=str(server.base_url), checks=[not_a_server_error], timeout=60)


# -- server: URLs, bodies and the listening address -------------------------------------------

TRAVERSALS = [
    b"POST /v1/models/../../../../etc/passwd:predict",
    b"POST /v1/models/%2e%2e/versions/1:predict",
    b"POST /v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd:predict",
    b"POST /v1/models/tiny/versions/%2e%2e:predict",
    b"POST /v1/models/tiny/versions/..%2F..%2F1:predict",
    b"POST /v1/models/tiny/versions/1%2F..%2F..%2F..%2Fetc:predict",
    b"POST /v1/models/%2Fetc%2Fpasswd:predict",
    b"POST /v1/models/%2Ftmp/versions/1:predict",
    b"GET /v1/models/tiny/versions/1/../../../../../etc/passwd",
    b"GET /v1/models/tiny/versions/1%00/metadata",
    b"GET /v1/models/..%5C..%5Cwindows/metadata",
    b"GET /v1/models/C:%5Cwindows%5Cwin.ini/metadata",
    b"GET //etc/passwd",
    b"GET /v1/models/tiny/versions/%2Fetc%2Fpasswd",
    b"GET /../../../../etc/passwd",
]


def test_urls_cannot_reach_files(server, export_base, tmp_path):
    absolute = str((export_base / "1" / "saved_model.pb").resolve()).encode()
    targets = [*TRAVERSALS, b"GET /v1/models/" + absolute, b"GET /v1/models/tiny" + absolute]
    body = b'{"instances": ["a"]}'
    with audited() as events:
        for target in targets:
            head = target + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            head += b"\r\nContent-Length: %d" % len(body)
            status, answer = raw_http(server.port, head, body)
            assert status in (400, 404, 405), (target, status, answer)
            assert b"root:" not in answer and b"error" in answer
    base = str(export_base.resolve())
    # FastAPI reads an endpoint's own source lines (inspect.getsourcelines) on its first call.
    source = str(Path(translator_package.__file__).resolve().parent)
    events = [(e, a) for e, a in events if not str(event_path(e, a)).startswith(source)]
    touched = {event_path(e, a) for e, a in events} - {None}
    # Only the version poller lists the export directory; no request opens or lists anything.
    assert all(p.startswith(base) for p in touched), sorted(touched)
    assert not any(e == "open" for e, _ in events), [a for e, a in events if e == "open"]


def test_versions_symlinked_out_of_the_model_directory_are_not_served(export_base, tmp_path):
    outside = tmp_path / "elsewhere" / "7"
    shutil.copytree(export_base / "1", outside)
    base = tmp_path / "model"
    base.mkdir()
    shutil.copytree(export_base / "1", base / "1")
    (base / "2").symlink_to(outside, target_is_directory=True)
    (base / "3").symlink_to(Path("..") / "elsewhere" / "7", target_is_directory=True)
    assert (base / "3" / "saved_model.pb").is_file()
    repo = ModelRepository(base, "model", keep_versions=3)
    repo.refresh()
    assert sorted(repo.versions) == [1]


def test_oversized_body_is_refused_before_it_is_read(server):
    # Content-Length of 1 GB and no body at all: a server reading the body would wait forever.
    start = time.monotonic()
    head = b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
    status, answer = raw_http(server.port, head + b"\r\nContent-Length: 1000000000", timeout=20)
    assert status == 413 and b"too large" in answer
    assert time.monotonic() - start < 10

    # Chunked (no Content-Length): refused once the limit is passed, while the client still sends.
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 1024
        for _ in range(SETTINGS.max_body_bytes // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, answer = read_response(sock)  # the terminating chunk was never sent
    assert status == 413 and b"over" in answer


def test_taken_port_is_a_one_line_error_before_loading(export_base, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        assert main(["serve", str(export_base), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
    assert time.monotonic() - start < 5  # failed before loading the model
    assert main(["serve", str(export_base), "--port", "70000"]) == 2
    assert "cannot listen on" in capsys.readouterr().err


# -- what loading a model directory reads -----------------------------------------------------


class _Exploit:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_decoys(directory: Path, marker: Path) -> None:
    payload = pickle.dumps(_Exploit(marker))
    code = f"open({str(marker)!r}, 'w').close()\n"
    for sub in (directory, directory / "assets", directory / "variables"):
        if sub.is_dir():
            for name in ("model.pkl", "keras_metadata.pb.pkl", "tokenizer.pickle"):
                (sub / name).write_bytes(payload)
            (sub / "__init__.py").write_text(code)
            (sub / "custom_objects.py").write_text(code)


def test_loading_models_unpickles_nothing_and_runs_no_code_from_the_directory(
    export_base, trained_dir, tmp_path
):
    export = tmp_path / "export"
    shutil.copytree(export_base, export)
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run, ignore=shutil.ignore_patterns("logs"))
    marker = tmp_path / "exploited"
    _plant_decoys(export / "1", marker)
    _plant_decoys(run, marker)
    with audited() as events:
        load_version(export / "1", 1)  # what the server loads
        Translator.load(export)  # an export through the Python API
        Translator.load(run).translate(["da rosso hunto"])  # a training directory
    assert not marker.exists()
    assert not [a for e, a in events if e == "pickle.find_class"]
    root = str(tmp_path.resolve())
    inside = [(e, event_path(e, a)) for e, a in events if (event_path(e, a) or "").startswith(root)]
    assert not [p for e, p in inside if e in ("exec", "compile", "import")]
    read = {os.path.relpath(p, root) for e, p in inside if e == "open"}
    assert read <= {
        "export/1/saved_model.pb",
        "export/1/assets/config.yaml",
        "export/1/assets/spm.source.model",  # the server's sentence splitter counts pieces
        "run/config.yaml",
        "run/spm.source.model",
        "run/spm.target.model",
    }, read


def test_yaml_python_tags_in_a_model_config_are_refused(trained_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run, ignore=shutil.ignore_patterns("logs"))
    marker = tmp_path / "exploited"
    config = (run / "config.yaml").read_text()
    evil = f'!!python/object/apply:os.system ["touch {marker}"]\n'
    (run / "config.yaml").write_text(config + "extra: " + evil)
    with pytest.raises(ConfigError):
        Translator.load(run)
    (run / "config.yaml").write_text(evil)
    with pytest.raises(TranslatorError):
        Translator.load(run)
    assert not marker.exists()
