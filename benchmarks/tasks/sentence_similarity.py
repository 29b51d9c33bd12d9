"""Sentence similarity (Instruction Induction's ``sentence_similarity``, STS pairs): rate 0-5 how far two
sentences say the same thing, as one of 6 labelled grades. One of the unseen tasks (see
``UNSEEN_TASKS``); its program and protocol were fixed before its first run."""

from . import _induction

LABELS = ["0 - definitely not", "1 - probably not", "2 - possibly", "3 - probably", "4 - almost perfectly",
          "5 - perfectly"]

TASK = _induction.task("sentence_similarity", "sentence_similarity",
                       "sentence similarity grade (6 labels, Instruction Induction)", "similarity", LABELS)
