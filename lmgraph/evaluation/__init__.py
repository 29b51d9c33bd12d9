"""Datasets, metrics and the evaluation harness."""

from .datasets import (
                       banking77_labels,
                       data_dir,
                       fingerprint,
                       load_banking77,
                       load_gsm8k,
                       load_hotpotqa,
                       load_hotpotqa_corpus,
                       load_sst2,
                       load_trec,
                       sample,
                       split,
)
from .evaluate import EvalResult, bootstrap_ci, evaluate, evaluate_sync, paired_bootstrap
from .metrics import (
                       exact_match,
                       f1_score,
                       label_accuracy,
                       normalize_answer,
                       normalized_em,
                       numeric_match,
                       parse_number,
                       token_f1,
                       with_feedback,
)

__all__ = ["EvalResult", "banking77_labels", "bootstrap_ci", "data_dir", "evaluate", "evaluate_sync",
           "exact_match", "f1_score", "fingerprint", "label_accuracy", "load_banking77", "load_gsm8k",
           "load_hotpotqa", "load_hotpotqa_corpus", "load_sst2", "load_trec", "normalize_answer",
           "normalized_em", "numeric_match", "paired_bootstrap", "parse_number", "sample", "split", "token_f1",
           "with_feedback"]
