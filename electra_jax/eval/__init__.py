"""Evaluation: metrics, the GLUE scorer and the SQuAD v1.1/v2.0 scorer (official-equivalent).

    from electra_jax.eval import metrics, squad
    metrics.glue_metrics("cola", preds, labels)                  # {"mcc": ...}
    squad.evaluate(dataset_json, predictions, na_probs=null_odds)   # same keys as the official scripts

    python -m electra_jax.eval.glue MRPC glue_data/MRPC/dev.tsv MRPC.tsv
    python -m electra_jax.eval.squad dev-v2.0.json predictions.json --na-prob-file null_odds.json
"""
