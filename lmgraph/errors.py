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


class RunError(LmgraphError):
    """Something failed while executing a pipeline."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node else message)

    def locate(self, node: str) -> "RunError":
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
    """The model backend failed (after retries)."""


class InputError(RunError):
    """A run was given inputs that do not match the pipeline's declared inputs."""


def _rebuild(cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    """Unpickle an lmgraph error without re-running its __init__ (whose signature varies)."""
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err
