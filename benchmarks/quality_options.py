"""Quality check of the speed options: BLEU after the same number of steps, option on vs off.

Trains the recipe once per variant with `translator.train.train` (same seed, same steps), then
translates the first `--sentences` sentences of the test split greedily and scores them with
sacreBLEU. Variants are given as "name:key=value,..." of train.* overrides (not cumulative).
Use `--set` to shrink the model or the step count so that every run fits the time you have.

Example (a reduced model, 400 steps per variant):

    python benchmarks/quality_options.py --corpus-dir ../shared/corpora/multi30k \\
        --set model.embedding_dim=128 --set model.units=128 --set train.max_steps=400

Prints JSON: per variant its BLEU and chrF on the test sentences, its steps, training seconds
and the trainer's own tokens/s (which includes checkpointing and per-epoch validation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from translator.api import Translator  # noqa: E402
from translator.config import config_from_dict, config_to_dict  # noqa: E402
from translator.evaluate import score  # noqa: E402
from translator.train import train  # noqa: E402

# "reference_seed_1" is the reference with another seed: the spread that seed alone gives is
# the noise floor against which an option's BLEU difference is read. XLA (jit_compile) is not
# among the defaults: on the 2-core development CPU the first XLA step (compile and run) on one
# bucket shape of the recipe's model did not return in 18 minutes (RESULTS.md); add
# "xla:...,jit_compile=true" to try it.
DEFAULT_VARIANTS = (
    "reference:packed_loss=false,mixed_precision=false,jit_compile=false,bucket_width=8;"
    "reference_seed_1:packed_loss=false,mixed_precision=false,jit_compile=false,bucket_width=8,"
    "seed=1;"
    "packed_loss:packed_loss=true,mixed_precision=false,jit_compile=false,bucket_width=8;"
    "bucket_width_2:packed_loss=true,mixed_precision=false,jit_compile=false,bucket_width=2;"
    "bf16:packed_loss=true,mixed_precision=true,jit_compile=false,bucket_width=8"
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_data_args(parser)
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--work-dir", help="where the runs go (default: a temporary directory)")
    args = parser.parse_args(argv)

    recipe = common.load_recipe(args)
    lang = recipe.data
    files = {
        split: {
            "source": str(common.corpus_file(args.corpus_dir, split, lang.source_lang)),
            "target": str(common.corpus_file(args.corpus_dir, split, lang.target_lang)),
        }
        for split in ("train", "val")
    }
    test = common.read_split(args, recipe, args.split)
    sources, references = test.sources[: args.sentences], test.targets[: args.sentences]
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_quality_")
    base = config_to_dict(recipe)
    base["data"] |= {"tfds": None, "train": files["train"], "valid": files["val"]}
    results = {}
    for name, overrides in common.parse_variants(args.variants, recipe, cumulative=False):
        values = common.with_overrides(
            base,
            overrides,
            early_stopping_patience=0,
            eval_bleu_sentences=100,  # per-epoch validation: keep it short
        )
        values["output_dir"] = os.path.join(work, name)
        if args.model_dir:  # reuse its SentencePiece models: every variant gets the same vocab
            os.makedirs(values["output_dir"], exist_ok=True)
            for file in ("spm.source.model", "spm.target.model"):
                with open(os.path.join(args.model_dir, file), "rb") as src:
                    with open(os.path.join(values["output_dir"], file), "wb") as dst:
                        dst.write(src.read())
        config = config_from_dict(values)
        start = time.perf_counter()
        result = train(config, progress=False)
        seconds = time.perf_counter() - start
        translator = Translator.load(config.output_dir, checkpoint="latest")
        hyps = translator.translate(sources, beam_size=1)
        scores = score(hyps, references)
        results[name] = {
            "overrides": overrides,
            "steps": result.steps,
            "bleu": scores["bleu"],
            "chrf": scores["chrf"],
            "train_seconds": round(seconds, 1),
            "tokens_per_s": round(result.tokens_per_second, 1),
        }
    report = {
        "benchmark": "quality_options",
        "machine": common.machine(),
        "settings": {"set": args.set, "sentences": len(sources), "split": args.split},
        "results": results,
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
