"""Bridges to other frameworks, each an optional extra imported only when used.

* :mod:`lmgraph.interop.dspy` -- ``from_dspy(module)`` turns a DSPy program (Predict,
  ChainOfThought, Retrieve) into an lmgraph Program; ``to_dspy_state(program, module)`` writes
  compiled instructions and demos back into the DSPy program's JSON state (extra ``[dspy]``).

Nothing here imports the other framework until a function is called.
"""
