"""Serving: a real uvicorn server on a loopback port, driven with real HTTP requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from hardening import uvicorn_in_thread

from translator.api import Translator
from translator.cli import build_parser
from translator.export import export_model
from translator.serving import ServeSettings, create_app

SETTINGS = ServeSettings(
    max_body_bytes=4096,
    max_sentences=16,
    max_chars=200,
    max_batch_size=32,
    max_wait_ms=20,
    poll_seconds=0.2,
)


@contextlib.contextmanager
def running(app, **config):
    """Runs `app` with uvicorn (more `uvicorn.Config` arguments in `config`) in a thread on a
    free loopback port; yields an httpx client."""
    with uvicorn_in_thread(app, **config) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def export_base(tiny_export):
    return tiny_export


@pytest.fixture(scope="module")
def server(export_base):
    app = create_app(export_base, SETTINGS)
    with running(app) as client:
        client.app = app
        yield client


@pytest.fixture(scope="module")
def api(trained_dir) -> Translator:
    return Translator.load(trained_dir)


@pytest.fixture(scope="module")
def sentences(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()[:10] + [""]


def test_predict_row_format_matches_the_python_api(server, api, sentences):
    instances = [sentences[0], {"text": sentences[1]}, {"b64": _b64(sentences[2])}, *sentences[3:]]
    r = server.post("/v1/models/tiny:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    want = api.translate(sentences, return_scores=True)
    assert [p["translation"] for p in predictions] == [h[0].text for h in want]
    np.testing.assert_allclose(
        [p["score"] for p in predictions], [h[0].score for h in want], atol=1e-4
    )
    assert predictions[-1] == {"translation": "", "score": 0.0}


def test_predict_columnar_and_signatures(server, api, sentences):
    r = server.post(
        "/v1/models/tiny/versions/1:predict",
        json={"signature_name": "beam", "inputs": {"text": sentences[:3]}},
    )
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert set(outputs) == {"translations", "scores"}
    want = api.translate(sentences[:3], beam_size=5, n_best=5, return_scores=True)
    assert outputs["translations"] == [[h.text for h in hyps] for hyps in want]
    assert all(len(s) == 5 and s == sorted(s, reverse=True) for s in outputs["scores"])

    r = server.post(
        "/v1/models/tiny:predict", json={"signature_name": "greedy", "inputs": ["", ""]}
    )
    assert r.json() == {"outputs": {"translation": ["", ""], "score": [0.0, 0.0]}}

    r = server.post("/v1/models/tiny:predict", json={"signature_name": "model_info"})
    info = r.json()["outputs"]
    assert (info["source_lang"], info["target_lang"]) == ("xx", "en")
    assert info["training_steps"] > 0


def test_status_metadata_health_and_openapi(server):
    status = server.get("/v1/models/tiny").json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert server.get("/v1/models/tiny/versions/1").json() == status
    meta = server.get("/v1/models/tiny/versions/1/metadata").json()
    assert meta["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "greedy", "beam", "model_info"}
    assert sigs["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"
    assert set(sigs["serving_default"]["outputs"]) == {"translation", "score"}
    assert server.get("/v1/models/tiny/metadata").json() == meta
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["versions"] == [1]
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/v1/translate", "/v1/models/{model}:predict", "/health"} <= set(paths)
    assert {"/v1/attention", "/v1/info"} <= set(paths)


def test_translate_route(server, api, sentences):
    r = server.post("/v1/translate", json={"text": sentences[:4]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["beam_size"]) == ("tiny", "1", 1)
    assert [t["text"] for t in body["translations"]] == api.translate(sentences[:4])
    assert all(t["hypotheses"] is None for t in body["translations"])

    r = server.post("/v1/translate", json={"text": sentences[:2], "beam_size": 5, "n_best": 3})
    body = r.json()
    want = api.translate(sentences[:2], beam_size=5, n_best=3, return_scores=True)
    assert body["beam_size"] == 5
    for t, hyps in zip(body["translations"], want, strict=True):
        assert [h["text"] for h in t["hypotheses"]] == [h.text for h in hyps]
        assert t["text"] == hyps[0].text


def test_translate_confidence_is_the_python_apis(server, api, sentences):
    for beam_size, n_best in ((1, 1), (5, 3)):
        r = server.post(
            "/v1/translate", json={"text": sentences, "beam_size": beam_size, "n_best": n_best}
        )
        assert r.status_code == 200, r.text
        got = r.json()["translations"]
        want = api.translate(sentences, beam_size=beam_size, n_best=n_best, return_scores=True)
        for t, hyps in zip(got, want, strict=True):
            assert t["confidence"] == pytest.approx(hyps[0].confidence, abs=1e-5)
            for h, w in zip(t["hypotheses"] or [], hyps, strict=False):
                assert h["confidence"] == pytest.approx(w.confidence, abs=1e-5)
    assert got[-1]["confidence"] == 0.0  # the empty sentence


def test_info_route(server):
    info = server.get("/v1/info").json()
    assert info == {
        "model": "tiny",
        "version": "1",
        "source_lang": "xx",
        "target_lang": "en",
        "beam_sizes": [1, 5],
        "default_beam_size": 1,
        "attention": False,
        "max_sentences": SETTINGS.max_sentences,
        "max_chars": SETTINGS.max_chars,
    }


def test_attention_route_refuses_a_model_without_attention(server):
    r = server.post("/v1/attention", json={"text": "a b c"})
    assert r.status_code == 400 and "no attention" in r.json()["error"]


def test_web_page_and_its_files(server):
    from translator.serving import page

    r = server.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "require-trusted-types-for 'script'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    for name, media_type in page.FILES.items():
        if name == "index.html":
            continue
        assert f"/static/{name}" in html
        f = server.get(f"/static/{name}")
        assert f.status_code == 200, name
        assert f.headers["content-type"].split(";")[0] == media_type.split(";")[0]
        assert f.headers["content-security-policy"] == csp
    assert "http:" not in html and "https:" not in html  # nothing from other hosts
    assert server.get("/static/other.js").status_code == 404
    assert "/" not in server.get("/openapi.json").json()["paths"]  # the page is not API


def test_concurrent_requests_are_batched(server, sentences):
    def stats():
        empty = {"batches": 0, "sentences": 0, "largest": 0}
        # /v1/translate runs the decoder's full decode function (log_probs, lengths too)
        return server.get("/health").json()["batching"]["1"].get("decode_greedy", empty)

    before = stats()
    sequential = [
        server.post("/v1/translate", json={"text": [s], "beam_size": 1}).json()["translations"]
        for s in sentences[:4]
    ]

    async def burst():
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=120) as client:
            requests = [
                client.post("/v1/translate", json={"text": [sentences[i % 4]], "beam_size": 1})
                for i in range(24)
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    texts = [r.json()["translations"][0]["text"] for r in responses]
    assert texts == [sequential[i % 4][0]["text"] for i in range(24)]
    after = stats()
    assert after["sentences"] - before["sentences"] == 28
    assert after["batches"] - before["batches"] < 28 - 4  # far fewer model calls than sentences
    assert after["largest"] > 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/models/other:predict", {"instances": ["a"]}, 404, "Latest(other)"),
        ("POST", "/v1/models/tiny/versions/9:predict", {"instances": ["a"]}, 404, "tiny, 9"),
        ("POST", "/v1/models/tiny/versions/..:predict", {"instances": ["a"]}, 404, "version"),
        ("POST", "/v1/models/..%2F..%2Fetc:predict", {"instances": ["a"]}, 404, ""),
        ("GET", "/v1/models/other", None, 404, "model other"),
        ("GET", "/v1/models/tiny/versions/2", None, 404, "version 2"),
        ("GET", "/v1/models/tiny/versions/2/metadata", None, 404, "tiny, 2"),
        ("POST", "/v1/models/tiny:predict", {"instances": "a"}, 400, "must be a list"),
        ("POST", "/v1/models/tiny:predict", {"instances": [3]}, 400, "instances[0]"),
        ("POST", "/v1/models/tiny:predict", {"instances": [{"txt": "a"}]}, 400, "'text'"),
        ("POST", "/v1/models/tiny:predict", {"instances": [{"b64": "%%"}]}, 400, "base64"),
        ("POST", "/v1/models/tiny:predict", {"inputs": {"text": "a"}}, 400, "list of strings"),
        ("POST", "/v1/models/tiny:predict", {"inputs": [], "instances": []}, 400, "both"),
        ("POST", "/v1/models/tiny:predict", {"signature_name": "x", "inputs": []}, 400, '"x"'),
        ("POST", "/v1/models/tiny:predict", {"signature_name": 3, "inputs": []}, 400, "string"),
        ("POST", "/v1/models/tiny:predict", {}, 400, "'instances'"),
        ("POST", "/v1/models/tiny:predict", [], 400, "JSON object"),
        ("POST", "/v1/models/tiny:predict", {"instances": ["a"] * 17}, 400, "too many"),
        ("POST", "/v1/models/tiny:predict", {"instances": ["a" * 201]}, 400, "201 characters"),
        ("POST", "/v1/models/tiny:predict", b'{"instances": ["a"', 400, "JSON Parse error"),
        ("POST", "/v1/models/tiny:predict", b"[" * 3000, 400, "JSON Parse error"),
        ("POST", "/v1/models/tiny:predict", b'{"instances": ["\xff"]}', 400, "UTF-8"),
        ("POST", "/v1/models/tiny:predict", b'{"instances": ["\\udc00"]}', 400, "UTF-8"),
        ("POST", "/v1/models/tiny:predict", {"instances": ["a" * 99] * 60}, 413, "too large"),
        ("POST", "/v1/translate", {"text": "a"}, 400, "text"),
        ("POST", "/v1/translate", {"text": ["a"], "beam_size": 3}, 400, "beam_size 3"),
        ("POST", "/v1/translate", {"text": ["a"], "beam_size": "5"}, 400, "beam_size"),
        ("POST", "/v1/translate", {"text": ["a"], "beam_size": True}, 400, "beam_size"),
        ("POST", "/v1/translate", {"text": ["a"], "beam_size": 0}, 400, "beam_size"),
        ("POST", "/v1/translate", {"text": ["a"], "beam_size": 5, "n_best": 6}, 400, "n_best"),
        ("POST", "/v1/translate", {"text": ["a"], "n_best": 2}, 400, "n_best"),
        ("POST", "/v1/translate", {"text": ["a"], "extra": 1}, 400, "extra"),
        ("POST", "/v1/translate", {"text": [None]}, 400, "text"),
        ("POST", "/v1/translate", {"text": ["a"] * 17}, 400, "too many"),
        ("POST", "/v1/translate", b"not json", 400, "JSON Parse error"),
        ("POST", "/v1/attention", {"text": ["a"]}, 400, "text"),
        ("POST", "/v1/attention", {"text": "a", "beam_size": 1}, 400, "beam_size"),
        ("POST", "/v1/attention", {"text": "a" * 201}, 400, "201 characters"),
        ("POST", "/v1/attention", {"text": "  "}, 400, "empty"),
        ("GET", "/v1/attention", None, 405, ""),
        ("GET", "/v1/translate", None, 405, ""),
        ("GET", "/nothing/here", None, 404, "Malformed request"),
    ],
)
def test_client_mistakes_get_4xx_json_errors(server, method, path, body, status, message):
    if isinstance(body, bytes):
        r = server.request(method, path, content=body)
    else:
        r = server.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_importing_the_server_imports_no_tensorflow():
    # TensorFlow is imported when a version is loaded, never by importing any serving module.
    code = (
        "import importlib, pkgutil, sys\n"
        "import translator.serving as serving\n"
        "names = [m.name for m in pkgutil.iter_modules(serving.__path__)]\n"
        "for name in names:\n"
        "    importlib.import_module(f'translator.serving.{name}')\n"
        "print(' '.join(sorted(names)))\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    modules, tensorflow = result.stdout.split("\n")[:2]
    assert {"app", "batching", "repository", "rest", "server"} <= set(modules.split())
    assert tensorflow == "False"


def test_default_bind_is_loopback():
    args = build_parser().parse_args(["serve", "saved_models/x"])
    assert (args.host, args.port) == ("127.0.0.1", 8501)


@pytest.mark.slow
def test_new_version_is_served_without_restart(export_base, trained_dir, tmp_path, sentences):
    base = tmp_path / "live"
    shutil.copytree(export_base / "1", base / "1")
    app = create_app(base, SETTINGS)
    with running(app) as client:
        assert client.post("/v1/translate", json={"text": ["x"]}).json()["version"] == "1"
        broken = base / "5"
        export_model(trained_dir, base, parity_sentences=4, precision="float32")  # version 2
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a protobuf")  # ignored, logged
        deadline = time.monotonic() + 120
        while client.get("/v1/models/live").json()["model_version_status"][0]["version"] != "2":
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.2)
        time.sleep(1.0)  # a few more polls: version 5 must not replace 2
        body = client.post("/v1/translate", json={"text": sentences[:2]}).json()
        assert body["version"] == "2"
        r = client.post("/v1/models/live/versions/2:predict", json={"instances": sentences[:2]})
        assert [p["translation"] for p in r.json()["predictions"]] == [
            t["text"] for t in body["translations"]
        ]
        assert (
            client.post("/v1/models/live/versions/1:predict", json={"instances": ["a"]}).status_code
            == 404
        )
        assert client.get("/health").json()["versions"] == [2]


@pytest.mark.slow
def test_cli_serve_in_a_subprocess(export_base):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "translator", "serve", str(export_base), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert health.json()["model"] == "tiny"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/translate", json={"text": [""]}, timeout=60)
        assert r.json()["translations"][0]["text"] == ""
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_unknown_or_missing_http_stack_is_a_one_line_cli_error(tmp_path, capsys, monkeypatch):
    import importlib.util

    from translator.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else find_spec(name)
    )
    for flags, message in (
        (["--http", "fast"], "--http must be one of auto, h11, httptools, got 'fast'"),
        (["--loop", "uvloop"], "--loop uvloop: uvloop is not installed"),
    ):
        # checked before the directory (which holds no model) or the port is touched
        assert main(["serve", str(tmp_path), "--port", "1", *flags]) == 2
        _, err = capsys.readouterr()
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_both_http_parsers_serve_and_reject_alike(export_base, http, sentences):
    # The `serve` extra installs httptools (uvicorn's "auto" then picks it); h11 stays a choice.
    app = create_app(export_base, SETTINGS)
    with running(app, http=http, loop="asyncio") as client:
        r = client.post("/v1/translate", json={"text": sentences[:2]})
        assert r.status_code == 200 and len(r.json()["translations"]) == 2
        r = client.post("/v1/translate", content=b'{"text": [', headers={"content-type": "x"})
        assert r.status_code == 400 and "error" in r.json()
        big = client.post("/v1/translate", content=b"x" * (SETTINGS.max_body_bytes + 1))
        assert big.status_code == 413


def test_missing_or_empty_directory_is_a_one_line_cli_error(tmp_path, capsys):
    from translator.cli import main

    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "missing", tmp_path / "empty"):
        assert main(["serve", str(directory), "--port", "1"]) == 2
        _, err = capsys.readouterr()
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
