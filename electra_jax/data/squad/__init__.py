"""SQuAD v1.1 / v2.0: readers (official JSON, TFDS), sliding-window featurization, span decoding.

    from electra_jax.data import squad
    from electra_jax.data.tokenization import load_tokenizer

    version, examples = squad.load_squad("dev-v2.0.json")          # "1.1" or "2.0"; or squad.read_squad(path)
    feats = squad.featurize_squad(examples, load_tokenizer("vocab.txt"), max_seq_length=384, doc_stride=128,
                                  max_query_length=64, is_training=False)
    batch = feats.arrays()          # input_ids, attention_mask, token_type_ids [F, L] (+ positions when training)
    ...                             # run the model: start_logits, end_logits [F, L]
    preds, null_odds, nbest = squad.postprocess(examples, feats, start_logits, end_logits, version_2=True)
    # preds {qid: text}; null_odds {qid: null score - best span score} (v2 only); nbest {qid: [{text, probability,..}]}

Features are built BERT-style from the tokenizer's character offsets: [CLS] question [SEP] context window [SEP], windows
`doc_stride` tokens apart, each context token flagged where its window gives it the most context. Answer text is cut
from the original context by character offsets. A head that scores spans some other way (e.g. ELECTRA's beam-search
head with an answerability logit) passes its per-feature candidates to `decode_candidates`, which shares the span
checks, the text extraction and the aggregation over windows with `postprocess`.
"""

from __future__ import annotations

from electra_jax.data.squad.parsing import (  # noqa: F401
    Answer, PathLike, SquadExample, SquadFormatError, detect_version, example_from_qa, load_squad, parse_squad,
    read_squad, read_squad_tfds)
from electra_jax.data.squad.features import (  # noqa: F401
    FeaturizeSummary, SquadFeatures, answer_token_span, doc_spans, featurize_squad, max_context_owner)
from electra_jax.data.squad.decoding import (  # noqa: F401
    decode_candidates, postprocess, top_span_candidates, valid_span)
