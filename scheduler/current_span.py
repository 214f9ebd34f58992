"""The current span, read and made current through OpenTelemetry's context variable.

The API's ``trace.get_current_span()`` is five Python calls (``get_value``,
two layers of ``get_current``, and an ABC ``isinstance`` check of the value),
and ``context.attach(trace.set_span_in_context(span))`` with its ``detach``
six more; a traced request reads the current span about eight times and
makes a span current twice, which under cProfile was a third of the Python
calls tracing added to a request. With the API's default runtime context
(``ContextVarsRuntimeContext``: one ``ContextVar`` holding an immutable
``Context``, a dict), the same is a read of the variable and of the span's
key, or a set of the variable to a copy of its ``Context`` with the span
under the key, as the API does it. Another runtime context (chosen with
``OTEL_PYTHON_CONTEXT``) gets the API's own functions.

Only spans are stored under the span key (the API's ``set_span_in_context``
is its one writer), so a value found there is returned as it is.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import INVALID_SPAN, Span

try:  # a private name of the API's: without it, the API's own functions
    from opentelemetry.trace.propagation import _SPAN_KEY
except ImportError:  # pragma: no cover - another opentelemetry-api
    _SPAN_KEY = ""

__all__ = ["current_context", "current_span", "make_current", "restore", "span_in"]


def _variable() -> ContextVar[Context] | None:
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if not _SPAN_KEY or type(runtime) is not ContextVarsRuntimeContext:
        return None
    variable = getattr(runtime, "_current_context", None)
    return variable if isinstance(variable, ContextVar) else None


#: The API's context variable, or None where the fallbacks are used.
_CURRENT = _variable()


def current_context() -> Context:
    """``opentelemetry.context.get_current()``."""
    return _CURRENT.get() if _CURRENT is not None else otel_context.get_current()


def current_span() -> Span:
    """``trace.get_current_span()``: the current context's span, or ``INVALID_SPAN``."""
    if _CURRENT is None:
        return trace.get_current_span()
    span: Span | None = _CURRENT.get().get(_SPAN_KEY)  # type: ignore[assignment]
    return INVALID_SPAN if span is None else span


def span_in(context: Context | None) -> Span:
    """``trace.get_current_span(context)``: the span of ``context``, or of
    the current context when it is None."""
    if context is None:
        return current_span()
    span: Span | None = context.get(_SPAN_KEY)  # type: ignore[assignment]
    return INVALID_SPAN if span is None else span


def make_current(span: Span) -> Token[Context]:
    """``context.attach(trace.set_span_in_context(span))``: ``span`` becomes
    current until ``restore`` is given the token."""
    if _CURRENT is None:
        return otel_context.attach(trace.set_span_in_context(span))
    values = _CURRENT.get().copy()
    values[_SPAN_KEY] = span
    return _CURRENT.set(Context(values))


def restore(token: Token[Context]) -> None:
    """``context.detach(token)``: the context current before ``make_current``."""
    if _CURRENT is None:
        otel_context.detach(token)
        return
    try:
        _CURRENT.reset(token)
    except (ValueError, RuntimeError):  # another context's, or used: the API logs it
        otel_context.detach(token)
