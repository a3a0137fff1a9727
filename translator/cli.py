"""Command line: train | translate | evaluate | export | serve | plot-history.

Thin: each command parses flags and makes one call.

User mistakes (TranslatorError, bad arguments) print one line on stderr and exit with status 2;
`--debug` shows the traceback and TensorFlow's own logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from translator.constants import CHECKPOINT_CHOICES, FLOAT32_BELOW_ROWS
from translator.errors import DataError, TranslatorError


def _decode_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: config decode)")
    parser.add_argument("--n-best", type=int, help="hypotheses per sentence (<= beam size)")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha; 0 = none")
    parser.add_argument("--max-length-ratio", type=float, help="max output/source length")
    parser.add_argument("--batch-size", type=int, help="sentences per decoding batch")
    parser.add_argument(
        "--no-split",
        dest="split_sentences",
        action="store_false",
        default=None,
        help="translate each line as one sequence, truncated at decode.max_source_length "
        "(default: config decode.split, on: lines are cut into sentences)",
    )


def _model_flag(parser: argparse.ArgumentParser, text: str) -> None:
    # Repeatable: two or more --model flags decode the models as one ensemble.
    parser.add_argument("--model", required=True, action="append", metavar="DIR", help=text)


def _decode_options(args: argparse.Namespace) -> dict:
    return {
        "beam_size": args.beam_size,
        "n_best": args.n_best,
        "length_penalty": args.length_penalty,
        "max_length_ratio": args.max_length_ratio,
        "batch_size": args.batch_size,
        "split": args.split_sentences,
    }


def _read_lines(path: str | None) -> list[str]:
    """Input sentences, one per line, from a file or stdin (undecodable bytes are replaced)."""
    if path is None:
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read input file {path}: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
        logging.warning("input is not valid UTF-8: undecodable bytes were replaced by U+FFFD")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def cmd_train(args: argparse.Namespace) -> int:
    from translator.config import load_config
    from translator.train import train
    from translator.training.budget import parse_minutes

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.time_budget:
        overrides.append(f"train.time_budget={parse_minutes(args.time_budget)}")
    if args.init_from:
        overrides.append(f"train.init_from={json.dumps(args.init_from)}")
    if args.init_checkpoint:
        overrides.append(f"train.init_checkpoint={args.init_checkpoint}")
    config = load_config(args.config, overrides)
    result = train(config, progress=not args.no_progress, started=args.started)
    summary = {
        "output_dir": config.output_dir,
        "steps": result.steps,
        "epochs": result.epochs_done,
        "seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "stopped_early": result.stopped_early,
        "dropout": result.dropout,
    }
    print(json.dumps({**summary, **(result.budget or {})}))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from translator.api import Translator

    translator = Translator.load(args.model)
    lines = _read_lines(args.input)
    if args.attention_plot:  # first: a model without attention fails before any output
        if len(lines) != 1:
            raise DataError(f"--attention-plot needs exactly one input sentence, got {len(lines)}")
        from translator.plots import write_attention_plot

        write_attention_plot(translator, lines[0], args.attention_plot, **_decode_options(args))
    results = translator.translate(
        lines, return_scores=True, progress=args.input is not None, **_decode_options(args)
    )
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for source, hyps in zip(lines, results, strict=True):
            if args.format == "jsonl":
                record = {
                    "source": source,
                    "translations": [
                        {"text": h.text, "score": h.score, "confidence": h.confidence} for h in hyps
                    ],
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                out.write(hyps[0].text + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from translator import data
    from translator.api import Translator
    from translator.evaluate import score

    translator = Translator.load(args.model, checkpoint=args.checkpoint)
    if args.source:
        corpus = data.read_parallel(args.source, args.target)
    else:
        corpus = data.load_corpus(translator.config.data, args.split)
    hyps = translator.translate(corpus.sources, progress=True, **_decode_options(args))
    result = score(hyps, corpus.targets)
    result["origin"] = corpus.origin
    result["beam_size"] = args.beam_size or translator.config.decode.beam_size
    if args.hypotheses:
        Path(args.hypotheses).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from translator.export import export_model
    from translator.export.layout import ASSETS_DIR, INFO_ASSET

    version_dir = export_model(
        args.model,
        args.output,
        beam_size=args.beam_size,
        n_best=args.n_best,
        checkpoint=args.checkpoint,
        parity_sentences=args.parity_sentences,
        precision=args.precision,
        bleu_tolerance=args.bleu_tolerance,
        store_weights=not args.cast_weights_per_call,
        float32_below=args.float32_below_rows,
    )
    info = json.loads((version_dir / ASSETS_DIR / INFO_ASSET).read_text(encoding="utf-8"))
    summary = {"export": str(version_dir), "version": int(version_dir.name)}
    summary.update(precision=info["precision"], precision_check=info["precision_check"])
    print(json.dumps(summary))
    return 0


_SERVE_SETTINGS = (
    "max_body_bytes",
    "max_sentences",
    "max_chars",
    "max_batch_size",
    "max_wait_ms",
    "poll_seconds",
    "keep_versions",
)


def cmd_serve(args: argparse.Namespace) -> int:
    from translator.serving import serve

    return serve(
        args.directory,
        host=args.host,
        port=args.port,
        access_log=args.access_log,
        http=args.http,
        loop=args.loop,
        model_name=args.name,
        **{k: getattr(args, k) for k in _SERVE_SETTINGS if getattr(args, k) is not None},
    )


def cmd_plot_history(args: argparse.Namespace) -> int:
    from translator.plots import write_history_plots

    paths = write_history_plots(args.directory, args.output)
    print(json.dumps({"plots": [str(p) for p in paths]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="translator", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="tracebacks and TensorFlow logs")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_translate,
        _add_evaluate,
        _add_export,
        _add_serve,
        _add_plot_history,
    ):
        add(sub)
    return parser


def _add_train(sub) -> None:
    """The `train` subcommand."""
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--output-dir", help="shortcut for --set output_dir=DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="train for the best model in this time, e.g. 30m or 1.5h (train.time_budget)",
    )
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="fine-tune: start from this trained model's weights and SentencePiece models "
        "(train.init_from)",
    )
    p.add_argument(
        "--init-checkpoint",
        choices=CHECKPOINT_CHOICES,
        help="the --init-from model's checkpoint to start from (default: best)",
    )
    p.set_defaults(func=cmd_train)


def _add_translate(sub) -> None:
    """The `translate` subcommand."""
    p = sub.add_parser("translate", help="translate lines from stdin or a file")
    _model_flag(p, "trained model directory or export; repeat for an ensemble")
    p.add_argument("--input", help="input file (default: stdin)")
    p.add_argument("--output", help="output file (default: stdout)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument(
        "--attention-plot",
        metavar="PNG",
        help="write the attention heatmap of the (single) input sentence (attention models)",
    )
    _decode_flags(p)
    p.set_defaults(func=cmd_translate)


def _add_evaluate(sub) -> None:
    """The `evaluate` subcommand."""
    p = sub.add_parser("evaluate", help="sacreBLEU BLEU and chrF as JSON")
    _model_flag(p, "trained model directory or export; repeat for an ensemble")
    p.add_argument("--source", help="source file (or a TSV file alone)")
    p.add_argument("--target", help="reference file")
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "valid", "test"),
        help="the config's split to use when --source is not given",
    )
    p.add_argument("--hypotheses", help="also write the translations to this file")
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="a training directory's checkpoint to score (default: best)",
    )
    _decode_flags(p)
    p.set_defaults(func=cmd_evaluate)


def _add_export(sub) -> None:
    """The `export` subcommand."""
    p = sub.add_parser("export", help="write a versioned SavedModel (tokenization inside)")
    _model_flag(p, "trained model directory; repeat to export an ensemble")
    p.add_argument("--output", required=True, help="export base directory, e.g. saved_models/NAME")
    p.add_argument("--beam-size", type=int, help="beam size of the 'beam' signature (default 5)")
    p.add_argument("--n-best", type=int, help="hypotheses of the 'beam' signature (default: beam)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument(
        "--parity-sentences", type=int, help="validation sentences checked on reload (default 64)"
    )
    p.add_argument(
        "--precision",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="what the export computes in; auto: bfloat16 where the CPU has amx_bf16 or "
        "avx512_bf16 (or on a GPU), after a BLEU check against float32 (default auto)",
    )
    p.add_argument(
        "--bleu-tolerance",
        type=float,
        default=0.3,
        help="how far a bfloat16 export's validation BLEU may be from float32's (default 0.3)",
    )
    p.add_argument(
        "--cast-weights-per-call",
        action="store_true",
        help="a bfloat16 export casts the decoder weights in every call instead of saving "
        "bfloat16 copies (smaller export, slower calls; same translations)",
    )
    p.add_argument(
        "--float32-below-rows",
        type=int,
        default=FLOAT32_BELOW_ROWS,
        help="a bfloat16 export translates calls of fewer rows (sentences x beam size) in "
        f"float32, where bfloat16 does not pay; 0: never (default {FLOAT32_BELOW_ROWS})",
    )
    p.set_defaults(func=cmd_export)


def _add_serve(sub) -> None:
    """The `serve` subcommand."""
    p = sub.add_parser(
        "serve", help="HTTP server for an export (TF Serving REST API, a web page at /)"
    )
    p.add_argument("directory", help="export base directory, e.g. saved_models/NAME")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--name", help="model name in URLs (default: the directory's name)")
    p.add_argument("--max-body-bytes", type=int, help="request body limit (default 1 MiB)")
    p.add_argument("--max-sentences", type=int, help="sentences per request (default 64)")
    p.add_argument("--max-chars", type=int, help="characters per sentence (default 1000)")
    p.add_argument("--max-batch-size", type=int, help="sentences per model call (default 32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        help="how long a batch waits for more sentences once the model is free (default 0: "
        "it starts at once with what queued while the previous batch ran)",
    )
    p.add_argument("--poll-seconds", type=float, help="new-version check period (default 2)")
    p.add_argument("--keep-versions", type=int, help="newest versions kept loaded (default 1)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--http",
        default="auto",
        help="HTTP parser: auto (httptools where installed, else h11), h11 or httptools",
    )
    p.add_argument(
        "--loop",
        default="auto",
        help="event loop: auto (uvloop where installed, else asyncio), asyncio or uvloop",
    )
    p.set_defaults(func=cmd_serve)


def _add_plot_history(sub) -> None:
    """The `plot-history` subcommand."""
    p = sub.add_parser("plot-history", help="PNGs of the training curves from DIR/history.json")
    p.add_argument("directory", help="trained model directory")
    p.add_argument("--output", help="directory for loss.png and scores.png (default: DIR/plots)")
    p.set_defaults(func=cmd_plot_history)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with stderr muted: its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `translator` command."""
    started = time.monotonic()  # a training time budget counts from here
    args = build_parser().parse_args(argv)
    args.started = started
    if not args.debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not args.debug:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
        for noisy in ("tensorflow", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    if not args.debug:
        _import_tensorflow_quietly()
    try:
        return args.func(args)
    except TranslatorError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # train: TrainingInterrupted says how to resume
        print(f"error: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
