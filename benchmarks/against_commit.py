"""In-process translation speed of this checkout against an older commit, on the same model.

Issue 19 measures "today's" speed: the code as it was when the issue was filed. This takes the
`translator` package of `--commit` from git (`git archive`), and runs it and this checkout's
package in turn, each in its own process (`--rounds` alternations, so drift of the machine hits
both), on the same model directory: greedy and beam throughput on the test sentences in one
call (the fastest of `--repeats` such calls in a process), and the median latency of
one-sentence calls. Each current precision is a separate
contestant (`--precisions`); the old code runs in its default precision, or in each of
`--old-precisions`. The translations each contestant shares with the old code (in the same
precision where it ran in it) are counted; speed-ups are over the first old contestant: of the
median throughputs (`speedup`) and the median of each round's ratio (`speedup_paired`).

    python benchmarks/against_commit.py --commit fdd1dc1 --model-dir /work/models/de_en_seed1 \\
        --source ../shared/corpora/multi30k/test_2016_flickr.de.gz

The old code must be able to read the model directory's config (older commits reject keys
they do not know). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    """One contestant, one round: prints its figures and translations as JSON on stdout."""
    from translator import api  # noqa: PLC0415  (the package on the PYTHONPATH main chose)

    precision, _, search = args.precision.partition("+")
    kwargs = {} if precision == "default" else {"precision": precision}
    translator = api.Translator.from_model_dir(args.model_dir, **kwargs)
    if search:  # "lean" or "full": this checkout's `Translator.lean`, set before any call
        translator.lean = search == "lean"
    sources = read_sources(args.source)
    translator.translate(sources[:64], beam_size=args.beam)  # trace the shapes once
    translator.translate(sources[:1], beam_size=args.beam)
    options = {"beam_size": args.beam}
    if args.batch_size:
        options["batch_size"] = args.batch_size
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        outputs = translator.translate(sources, **options)
        times.append(time.perf_counter() - start)
    seconds = min(times)  # the least disturbed of the process's calls
    single = []
    for sentence in sources[: args.single_calls]:
        start = time.perf_counter()
        translator.translate([sentence], beam_size=args.beam)
        single.append(1000 * (time.perf_counter() - start))
    code = str(Path(api.__file__).parent)
    result = {"seconds": seconds, "single_ms": single, "outputs": outputs, "code": code}
    json.dump(result, sys.stdout)


def read_sources(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def run_contestant(path: str, precision: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "--precision", precision]
    command += ["--model-dir", args.model_dir, "--source", args.source, "--beam", str(args.beam)]
    command += ["--single-calls", str(args.single_calls), "--repeats", str(args.repeats)]
    command += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{precision} at {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", help="the older commit (git rev) to run against")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--source", required=True, help="source sentences, one per line (.gz)")
    parser.add_argument(
        "--precisions",
        default="float32,bfloat16",
        help="of this checkout; a precision with +lean or +full also sets `Translator.lean` "
        "(searches from logits without finished sentences, or the full search), e.g. "
        "float32+lean",
    )
    parser.add_argument(
        "--old-precisions",
        help="precisions to load the old commit in (`from_model_dir(precision=)`); default: "
        "its default (commits before issue 19 had no precision option)",
    )
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="sentences per model call in the throughput calls (0: each code's default, "
        "which for a trained model directory is its config's decode.batch_size)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed calls on all sentences per process (min)"
    )
    parser.add_argument("--single-calls", type=int, default=40, help="one-sentence calls")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if not args.commit:
        parser.error("--commit is required")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: PLC0415  (imports this checkout's translator; a worker must not)

    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.commit, "translator"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        old_precisions = args.old_precisions.split(",") if args.old_precisions else ["default"]
        contestants = {f"old_{p}": (old, p) for p in old_precisions}
        contestants |= {p: (str(ROOT), p) for p in args.precisions.split(",")}
        runs: dict[str, list[dict]] = {name: [] for name in contestants}
        for _ in range(args.rounds):
            for name, (path, precision) in contestants.items():
                runs[name].append(run_contestant(path, precision, args))
    sentences = len(read_sources(args.source))
    base_name = next(iter(runs))
    results = {}
    for name, rounds in runs.items():
        twin = f"old_{name}" if f"old_{name}" in runs else base_name  # same precision if run
        old_out = runs[twin][0]["outputs"]
        seconds = common.median([r["seconds"] for r in rounds])
        results[name] = {
            "sent_per_s": round(sentences / seconds, 1),
            "code": rounds[0]["code"],
            "rounds_s": [round(r["seconds"], 2) for r in rounds],
            "one_sentence_p50_ms": round(
                common.median([ms for r in rounds for ms in r["single_ms"]]), 1
            ),
            "identical_to": twin,
            "identical": sum(a == b for a, b in zip(rounds[0]["outputs"], old_out, strict=True)),
        }
    base = results[base_name]["sent_per_s"]
    for name, result in results.items():
        result["speedup"] = round(result["sent_per_s"] / base, 2)
        # the rounds alternate, so drift of the machine hits a round's contestants alike
        pairs = zip(runs[base_name], runs[name], strict=True)
        paired = [b["seconds"] / r["seconds"] for b, r in pairs]
        result["speedup_paired"] = round(common.median(paired), 2)
    result = {
        "benchmark": "against_commit",
        "machine": common.machine(),
        "commit": args.commit,
        "model_dir": args.model_dir,
        "beam": args.beam,
        "batch_size": args.batch_size or "default",
        "sentences": sentences,
        "rounds": args.rounds,
        "results": results,
    }
    common.write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
