"""Model-call failures, as ``RecordError``s so the pipeline marks one row failed and goes on.

Kinds after the retry budget is spent, named after the last error: ``timeout``, ``http_5xx``,
``rate_limited`` (429), ``connection_error`` (reset or broken), ``server_error`` (408, 409,
425), ``bad_response`` (an answer that is not a chat completion: not JSON, no text, token
counts that are not counts). ``unparseable_output``: the model answered but not in the
required structure; the message keeps the raw text. ``model_bad_request``: the server refused
the request itself, e.g. too many images or context too long; retrying cannot help.
``request_too_long``: refused before sending, its counted tokens exceed the model's
``max_model_len``; the message has the numbers. ``bad_image``: input is not JPEG.
``bad_input``: wrong number of images or text inputs for the prompt.

``AnswerRejected`` is the model answering every attempt with an unusable answer (empty,
truncated, a refusal, …: ``llm.answer_checks``); its kind is the last answer's defect and the
row becomes ``rejected``, not ``failed``.

A model that no endpoint answers is not a row's failure: requests wait, and past the outage
limit the run stops (``OutageLimitReached``) with nothing marked.
"""

from __future__ import annotations

from refsav_pipeline.errors import RecordError, RunStopped


class ModelCallError(RecordError):
    """The retry budget is spent without an answer."""

    def __init__(self, message: str, *, kind: str = "server_error", model: str = "",
                 attempts: int = 0, video_id: str | None = None,
                 masklet_id: int | None = None) -> None:
        super().__init__(kind, message, video_id=video_id, masklet_id=masklet_id)
        self.model = model
        self.attempts = attempts


class UnparseableOutputError(RecordError):
    """The model kept answering in a shape we cannot use; ``raw`` is its last answer."""

    def __init__(self, message: str, *, raw: str, model: str = "", video_id: str | None = None,
                 masklet_id: int | None = None) -> None:
        super().__init__("unparseable_output", f"{message}; raw output: {raw!r}",
                         video_id=video_id, masklet_id=masklet_id)
        self.raw = raw
        self.model = model


class BadRequestError(ModelCallError):
    """HTTP 4xx other than 429: the request itself is wrong for this server."""

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, kind="model_bad_request", **kw)  # type: ignore[arg-type]


class AnswerRejected(RecordError):
    """Every attempt of one call gave an answer that failed a check (``llm.answer_checks``).

    ``kind`` is the last answer's defect kind; ``answer`` that answer (kept for inspection);
    ``failures`` the defect kinds of all failed attempts, in order; ``call`` the prompt key.
    """

    def __init__(self, message: str, *, kind: str, call: str, answer: str | None,
                 failures: list[str], model: str = "", video_id: str | None = None,
                 masklet_id: int | None = None) -> None:
        super().__init__(kind, message, video_id=video_id, masklet_id=masklet_id)
        self.call = call
        self.answer = answer
        self.failures = failures
        self.model = model
        self.message = message


def with_where(err: RecordError, video_id: str | None, masklet_id: int | None) -> RecordError:
    """The same error re-labelled with the record it belongs to (calls know it, the client not)."""
    if video_id is None or err.video_id is not None:
        return err
    raw = getattr(err, "raw", None)
    msg = str(err)
    if isinstance(err, AnswerRejected):
        new: RecordError = AnswerRejected(err.message, kind=err.kind, call=err.call,
                                          answer=err.answer, failures=err.failures,
                                          model=err.model, video_id=video_id,
                                          masklet_id=masklet_id)
    elif isinstance(err, UnparseableOutputError):
        msg = msg.split("; raw output: ", 1)[0]
        new = UnparseableOutputError(msg, raw=raw or "", model=err.model,
                                                  video_id=video_id, masklet_id=masklet_id)
    elif isinstance(err, ModelCallError):
        new = ModelCallError(msg, kind=err.kind, model=err.model, attempts=err.attempts,
                             video_id=video_id, masklet_id=masklet_id)
    else:
        new = RecordError(err.kind, msg, video_id=video_id, masklet_id=masklet_id)
    new.__cause__ = err.__cause__
    return new


class OutageLimitReached(RunStopped):
    """No endpoint of a model answered for ``client.outage_limit_s``: the run stops, unmarked."""
