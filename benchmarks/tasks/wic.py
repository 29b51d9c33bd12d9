"""Word in context (Instruction Induction's ``word_in_context``): does the marked word mean the same in
both sentences? 2 labels. One of the unseen tasks (see ``UNSEEN_TASKS``): added to check the default
compiler on tasks it was never developed on; its program and protocol were fixed before its first run."""

from . import _induction

LABELS = ["same", "not the same"]

TASK = _induction.task("wic", "word_in_context",
                       "word in context: same meaning in both sentences? (2 labels, Instruction Induction)",
                       "meaning", LABELS)
