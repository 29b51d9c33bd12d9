"""Error hierarchy.

Two families under one root:

* :class:`DefinitionError` -- the user's program is wrong (bad signature, unbound input,
  type mismatch on an edge...). Raised before any model call; the message names the
  node, the field and the fix.
* :class:`RunError` -- something failed while running (unparseable output, budget spent,
  backend failure). Recorded in traces; in a batch it is stored on the example's result.
"""

from __future__ import annotations


class LmgraphError(Exception):
    """Root of every error raised by lmgraph."""


class DefinitionError(LmgraphError):
    """A mistake in how a signature, module or pipeline was declared.

    ``node``/``field`` locate the mistake, ``fix`` says what to do about it.
    """

    def __init__(self, message: str, *, node: str | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.message = message  # without the location and the fix
        self.node = node
        self.field = field
        self.fix = fix
        where = []
        if node is not None:
            where.append(f"node {node!r}")
        if field is not None:
            where.append(f"field {field!r}")
        text = (", ".join(where) + ": " if where else "") + message
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:  # keep node/field/fix across pickling (Ray, processes)
        return (_rebuild, (type(self), self.args, self.__dict__))


class SignatureError(DefinitionError):
    """A signature string or class could not be understood."""


class PipelineValidationError(DefinitionError):
    """A pipeline graph failed static validation. ``problems`` lists every finding."""

    def __init__(self, problems: list[DefinitionError]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        # str(first) already says where and how to fix it: don't prefix the location twice
        LmgraphError.__init__(
            self, str(first) if len(self.problems) == 1 else
            f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems))
        self.node, self.field, self.fix = first.node, first.field, first.fix
        self.message = first.message if len(self.problems) == 1 else str(self)


class ArtifactError(DefinitionError):
    """A saved pipeline artifact could not be loaded."""


class ConfigError(DefinitionError, ValueError):
    """A setting has a value it cannot take (a negative budget, an unknown render format, a
    temperature of ``"hot"``). The message names the setting, the value and what is valid; it is
    also a ``ValueError``, so code that caught the old bare error keeps working."""


class UsageError(DefinitionError, TypeError):
    """An lmgraph function was called with the wrong kind of argument (e.g. a dict of inputs passed
    positionally where the RunContext goes). Also a ``TypeError``."""


class DatasetError(DefinitionError):
    """A dataset row lacks a field the program or the metric reads (found before any model call).

    ``row`` is the row's index, ``row_id`` its ``id`` field if it has one."""

    def __init__(self, message: str, *, row: int | None = None, row_id: object = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.row = row
        self.row_id = row_id
        super().__init__(message, field=field, fix=fix)


class MetricError(DefinitionError):
    """A metric cannot be used as given (wrong number of arguments, a return value that is not a
    score), or -- with ``evaluate(..., strict=True)`` -- raised on a row (chained as ``__cause__``).

    ``metric`` names the metric, ``row`` is the row's index (None for a problem found up front)."""

    def __init__(self, message: str, *, metric: str | None = None, row: int | None = None,
                 fix: str | None = None) -> None:
        self.metric = metric
        self.row = row
        super().__init__(f"metric {metric!r}: {message}" if metric else message, fix=fix)


class BudgetError(DefinitionError):
    """A budget too small for the work asked of it, known before any model call is made (e.g. a
    compile budget that cannot cover scoring the baseline once). The fix names the minimum."""


class LmgraphWarning(UserWarning):
    """Base class of lmgraph's warnings."""


class ProviderWarning(LmgraphWarning):
    """Some rows of an evaluation got no answer from the provider (after retries): they are
    reported, not scored."""


class MetricWarning(LmgraphWarning):
    """A metric raised on some rows (scored 0 there), or was adapted to the (example, prediction,
    trace) calling convention."""


class ContextFitWarning(LmgraphWarning):
    """A node's prompt did not fit the model's context window with all its demos, so the demos
    farthest from the input were left out (once per node and process; the trace says how many)."""


class RunError(LmgraphError):
    """Something failed while executing a pipeline."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node else message)

    def locate(self, node: str) -> RunError:
        """Name the node the error happened in (once; the message says it too)."""
        if self.node is None:
            self.node = node
            if self.args and isinstance(self.args[0], str):
                self.args = (f"node {node!r}: {self.args[0]}", *self.args[1:])
        return self

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class OutputParseError(RunError):
    """The model's completion could not be parsed into the signature's output fields."""

    def __init__(self, message: str, *, node: str | None = None, field: str | None = None,
                 raw: str = "") -> None:
        self.field = field
        self.raw = raw
        loc = f"field {field!r}: " if field else ""
        super().__init__(f"{loc}{message}", node=node)


class BudgetExceeded(RunError):
    """A hard budget (calls, tokens or dollars) is spent; no further model calls are made."""


class LMError(RunError):
    """The model backend failed (after retries).

    ``retryable`` is False for failures no retry can fix (a bad request, authentication, a
    prompt longer than the context); ``status`` is the HTTP status when the provider answered
    one; ``retry_after_s`` how long the provider asked to wait (``Retry-After`` /
    ``retry-after-ms``), honoured by :class:`~lmgraph.lm.wrappers.RetryLM`.
    ``context_overflow`` is True when the prompt did not fit the model's context window (the
    backends mark it; Predict then drops demos and asks again, see :mod:`lmgraph.modules.predict`).
    A retryable LMError that persists is a *provider failure*: a row it ends has no answer
    (not a wrong one) and is never scored, memoised or cached as one.
    """

    retryable: bool = True
    status: int | None = None
    retry_after_s: float | None = None
    context_overflow: bool = False

    def __init__(self, message: str, *, node: str | None = None, retryable: bool = True,
                 status: int | None = None, retry_after_s: float | None = None,
                 context_overflow: bool = False) -> None:
        super().__init__(message, node=node)
        self.retryable = retryable and not context_overflow
        self.status = status
        self.retry_after_s = retry_after_s
        self.context_overflow = context_overflow


class ProviderFailureError(RunError):
    """A compile could not get answers for some rows: the provider kept failing (timeouts, 5xx,
    connection errors, unreadable bodies) after every retry and re-run. Nothing failed was scored,
    memoised or checkpointed: resuming with the same checkpoint picks up where it stopped.

    ``failed`` is how many rows had no answer, ``total`` how many were evaluated, ``last_error``
    the last provider error (text)."""

    def __init__(self, message: str, *, failed: int = 0, total: int = 0, last_error: str = "") -> None:
        self.failed = failed
        self.total = total
        self.last_error = last_error
        super().__init__(message)


class InputError(RunError):
    """A run was given inputs that do not match the pipeline's declared inputs."""


def _rebuild(cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    """Unpickle an lmgraph error without re-running its __init__ (whose signature varies)."""
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err
