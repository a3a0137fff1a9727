"""Do float32 and bfloat16 training compute the same gradients? One batch, both precisions.

Builds a trained model directory's model twice, in `float32` and in `mixed_bfloat16`, with the
same weights (the directory's checkpoint with `--checkpoint`, else the same seeded
initialisation), and takes the training loss's gradient on one token batch of the validation
split (dropout off, the recipe's label smoothing and packed loss). Prints, per variable, both
gradient norms and their cosine: a precision path that dropped or distorted a gradient (a tied
output layer's share of the embedding gradient, say) shows as a cosine well below 1.

    python benchmarks/precision_gradients.py --corpus-dir ../shared/corpora/multi30k \\
        --model-dir runs/multi30k_de_en_30min --checkpoint best

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from translator.config import load_config  # noqa: E402
from translator.model import build_model  # noqa: E402
from translator.model_dir import CONFIG_FILE, find_checkpoint  # noqa: E402
from translator.pipeline import make_dataset  # noqa: E402
from translator.training.losses import replica_loss  # noqa: E402


def gradients(config, tokenizers, batch, policy: str, checkpoint: str | None) -> tuple:
    """(loss, [gradient as a dense array per trainable variable]) in `policy`."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(config.model, tokenizers.source_vocab_size, tokenizers.target_vocab_size)
    if checkpoint:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    with tf.GradientTape() as tape:
        loss, _, _ = replica_loss(model, batch, config.train, False)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    keras.mixed_precision.set_global_policy("float32")
    pairs = zip(variables, grads, strict=True)
    return float(loss), [(v.path, tf.convert_to_tensor(g).numpy()) for v, g in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", required=True, help="Multi30k-style files")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--split", default="val", help="file prefix of the batch's pairs")
    parser.add_argument("--checkpoint", help="best | latest (default: seeded initial weights)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    config = load_config(os.path.join(args.model_dir, CONFIG_FILE))
    tokenizers, encoded = common.encoded_split(args, config, args.split)  # --model-dir's models
    train = config.train
    batches = make_dataset(
        encoded, train.batch_size, train.batch_tokens, train.bucket_width,
        config.data.max_length, shuffle=False,
    )  # fmt: skip
    batch = next(iter(batches))
    checkpoint = find_checkpoint(args.model_dir, args.checkpoint) if args.checkpoint else None
    loss32, grads32 = gradients(config, tokenizers, batch, "float32", checkpoint)
    loss16, grads16 = gradients(config, tokenizers, batch, "mixed_bfloat16", checkpoint)
    variables = []
    for (name, a), (_, b) in zip(grads32, grads16, strict=True):  # same build order
        x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
        cosine = float(x @ y / (nx * ny)) if nx and ny else float("nan")
        variables.append({"variable": name, "norm_float32": nx, "norm_bfloat16": ny,
                          "cosine": round(cosine, 5)})  # fmt: skip
    result = {
        "benchmark": "precision_gradients",
        "machine": common.machine(),
        "model_dir": args.model_dir,
        "checkpoint": args.checkpoint or "initial (seeded)",
        "batch": {"sentences": int(batch[0].shape[0]), "target_positions": int(batch[2].shape[1])},
        "loss": {"float32": loss32, "bfloat16": loss16},
        "min_cosine": min(v["cosine"] for v in variables),
        "variables": variables,
    }
    common.write_json(result, args.output)


if __name__ == "__main__":
    main()
