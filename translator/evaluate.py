"""Corpus-level scores with sacreBLEU: BLEU and chrF, detokenized and cased, with signatures."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu

from translator.errors import DataError


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """sacreBLEU BLEU and chrF of `hypotheses` against one reference each.

    Returns:
        {"bleu": float, "chrf": float, "bleu_signature": str, "chrf_signature": str,
         "sentences": int}
    """
    if len(hypotheses) != len(references):
        raise DataError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must align"
        )
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    refs = [list(references)]
    bleu_score = bleu.corpus_score(list(hypotheses), refs)
    chrf_score = chrf.corpus_score(list(hypotheses), refs)
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
    }
