"""Open a chat stream for a resolved catalogue model: the one path both ``/api/ai/...`` and ``/v1`` use.

``open_stream`` does everything that must happen *before the first byte reaches the client*:
credentials check, provider lookup, circuit breakers (the provider's, the model's), retries of transient
failures, the model's ``fallbacks``, and waiting for the first upstream event. A fallback is admitted like a
direct call to it (``limits.Admission``): one the caller's key may not use, or whose provider or model is at
its concurrency cap, is skipped — never a way around the key's policy or the caps.

Errors up to that point raise (and become an HTTP error response); after it, they are raised from
the returned iterator and the encoder turns them into the client protocol's error part. Once the
first event is in, the answering model is fixed: a mid-stream failure is reported, never papered
over with another model (see ``resilience.py``).

Every attempt is recorded where operators look: ``modelgate_upstream_*`` metrics, the health
signals of ``/api/status``, and the request's ``Observation`` (its access log line).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from modelgate.chat import ChatRequest, Finish, StreamEvent, Usage
from modelgate.errors import (
    BadRequest,
    Forbidden,
    ModelgateError,
    ProviderNotConfigured,
    RateLimited,
    UpstreamProtocolError,
)
from modelgate.observer import Observation, current_observation
from modelgate.providers._http import estimate_prompt_tokens
from modelgate.push_lane import register_relay
from modelgate.resilience import (
    BreakerConfig,
    CircuitOpen,
    RetryBudget,
    RetryPolicy,
    counts_as_failure,
    may_fall_back,
    outcome_of,
    provider_wide,
)

if TYPE_CHECKING:
    from modelgate.app import GatewayState
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.limits import Admission
    from modelgate.providers import Provider

log = logging.getLogger("modelgate.gateway")


@dataclass
class StreamStart:
    #: The model that actually answers (differs from the requested one after a fallback).
    model: CatalogueModel
    #: Parameters that were set but that the answering provider cannot honour.
    dropped_params: list[str]
    #: The reply in batches (the events of one upstream read each), the first included; raises
    #: ``ModelgateError`` on a mid-stream failure. The batch holding the ``Finish`` is the last.
    events: AsyncIterator[Sequence[StreamEvent]]
    #: Models tried before ``model`` answered, with the error each gave (for logs and headers).
    attempts: list[tuple[str, str]] = field(default_factory=list)
    #: The first batch ended the reply (a whole reply, or a short one): reading ``events`` waits on nobody.
    complete: bool = False


async def open_stream(
    state: GatewayState, model: CatalogueModel, request: ChatRequest, admission: Admission, *, whole: bool = False
) -> StreamStart:
    """Start ``model``'s reply to ``request`` (or a fallback's) and wait for its first event.

    ``admission`` is what ``limits.admit`` gave for ``model``; each fallback is admitted through it.
    ``whole``: the caller wants the reply whole, not as it comes (``Provider.complete``: one JSON reply
    from the upstream where its protocol offers one); everything else is the same.
    Raises the requested model's own error when it and every fallback failed or were skipped.
    """
    # One catalogue and its provider instances for the whole request, read together: a reload during a
    # retry's wait must not leave the fallbacks fixed below without the instances they name.
    catalogue, providers = state.catalogue, state.providers
    if admission.budget is not None:  # first: a key that has spent it reaches no upstream (and has no ledger row)
        # Held at the most any model that may answer could cost: a fallback generating more (or priced where the
        # requested model is not) must not run on a smaller hold.
        await admission.reserve_budget(
            [(c, _for_model(request, c)) for c in _candidates(catalogue, model)],
            billed_by_reply={name for name, provider in providers.items() if provider.reports_cost},
        )
    obs = current_observation()
    attempts: list[tuple[str, str]] = []
    if obs is not None:  # the log line names the requested model even when nothing answers
        obs.model, obs.provider, obs.attempts = model.id, model.provider, attempts
        obs.requested_model, obs.catalogue = model.id, catalogue
        if state.tracing is not None:
            obs.trace = state.tracing.start_request(obs, model, request, catalogue)
    first_error: ModelgateError | None = None
    for candidate in _candidates(catalogue, model):
        call = _for_model(request, candidate)
        provider = providers.get(candidate.provider)
        if provider is not None:
            declined = call.without_declined_tools()  # itself unless tools come with tool_choice "none"
            if declined is not call and "tools" not in provider.model_capabilities(candidate):
                call = declined
            try:
                # Before any upstream call (and before a fallback takes a slot): the requested model's refusal
                # is the answer (400 naming model and capability); a fallback that cannot serve the request
                # (no tools, no images) is passed over.
                provider.check(candidate, call)
            except BadRequest as exc:
                if candidate is model:
                    raise
                log.info("fallback %s skipped for %s: %s", candidate.id, model.id, exc.message)
                attempts.append((candidate.id, exc.message))
                continue
        if candidate is not model:
            try:
                await admission.admit_fallback(candidate)
            except (Forbidden, RateLimited) as exc:
                # Skipped, not refused: the caller asked for a model it may use, and hearing about
                # a fallback it may not use would tell it that model exists. The log line says why.
                log.info("fallback %s skipped for %s: %s", candidate.id, model.id, exc.message)
                attempts.append((candidate.id, exc.message))
                continue
        try:
            start = await _open_model(state, catalogue, provider, candidate, call, attempts, obs, whole)
        except ModelgateError as exc:
            if candidate is model and not may_fall_back(exc):
                raise  # the request itself was refused (a 400): just as invalid elsewhere
            # A fallback's refusal is its own (a smaller context window, say): it is in the attempts, the
            # next fallback may serve, and the client hears the requested model's error, not this one.
            first_error = first_error or exc
            continue
        if candidate is not model:
            log.warning("model %s answered for %s after: %s", candidate.id, model.id, "; ".join(e for _, e in attempts))
        start.attempts = attempts
        return start
    assert first_error is not None
    raise first_error


def _candidates(catalogue: Catalogue, model: CatalogueModel) -> list[CatalogueModel]:
    """The model, then its fallbacks in order (one level: a fallback's own fallbacks are not followed)."""
    chain = [model]
    for model_id in model.fallbacks:
        fallback = catalogue.by_id.get(model_id)
        if fallback is not None and fallback not in chain:
            chain.append(fallback)
    return chain


def _for_model(request: ChatRequest, model: CatalogueModel) -> ChatRequest:
    """The caller's overrides applied over ``model``'s catalogue defaults.

    ``max_new_tokens`` is capped by the model's own limit: the routes checked it against the requested
    model, and a fallback may allow fewer.
    """
    overrides = request.params.set_fields()
    wanted = overrides.get("max_new_tokens")
    limit = model.parameters.max_new_tokens
    if isinstance(wanted, int) and wanted > limit:
        overrides["max_new_tokens"] = limit
    return replace(request, params=model.defaults.merged(**overrides))


async def _open_model(
    state: GatewayState,
    catalogue: Catalogue,
    provider: Provider | None,
    model: CatalogueModel,
    request: ChatRequest,
    attempts: list[tuple[str, str]],
    obs: Observation | None,
    whole: bool,
) -> StreamStart:
    """One model: breakers (its provider's, its own), then attempts with retries, until its first event or a
    final error.

    ``catalogue`` and ``provider`` (``model``'s instance in it) are what ``open_stream`` read at its start.
    """
    metrics = state.metrics
    missing = state.missing_credentials(model.provider, catalogue) if provider is not None else []
    # No provider: the route resolved the model just before a reload removed its instance.
    if provider is None or missing:
        error = ProviderNotConfigured(model.provider, missing)
        attempts.append((model.id, error.message))
        raise error
    entry = catalogue.provider_entry(model.provider)
    config, pool = BreakerConfig.from_entry(entry), provider.quota_pool(model.upstream_model)
    breakers = state.breakers.for_model(model.provider, model.upstream_model, config, pool=pool)
    budget = RetryBudget(RetryPolicy.from_entry(entry), state.breakers.rng)
    trace = obs.trace if obs is not None else None
    while True:
        if trace is not None:  # one span per attempt (tracing.py), a breaker's fast refusal included
            trace.start_attempt(model, request, provider.connection.base_url)
        sent = time.perf_counter()
        try:
            passage = breakers.acquire()  # this attempt's own: only a half-open breaker's trial may end its trial
        except CircuitOpen as exc:
            metrics.observe_upstream(model.provider, model.id, outcome_of(exc))
            if trace is not None:
                trace.fail_attempt(exc)
            attempts.append((model.id, exc.message))
            raise
        try:
            first, upstream = await _first_batch(provider, model, request, whole)
        except ModelgateError as exc:
            metrics.observe_upstream(model.provider, model.id, outcome_of(exc))
            if trace is not None:
                trace.fail_attempt(exc)
            breakers.record_failure(exc, passage)
            _record_failure(state, model, exc)
            attempts.append((model.id, exc.message))
            delay = budget.next_delay(exc)
            if delay is None:
                raise
            log.info("retrying %s in %.2f s after: %s", model.id, delay, exc.message)
            await asyncio.sleep(delay)
            continue
        except BaseException as exc:
            breakers.release(passage)  # cancelled (client gone) or a bug: no verdict on provider or model
            if trace is not None:
                trace.fail_attempt(exc)
            if isinstance(exc, Exception):
                metrics.observe_upstream(model.provider, model.id, "error")
            raise
        answered = time.perf_counter()
        ttft = answered - sent
        breakers.record_success()
        state.status.record(model.provider, model.id, ok=True, ttft=ttft)
        metrics.observe_first_token(model.provider, model.id, ttft)
        lost = [
            *provider.dropped_params(request.params),
            *provider.unenforced(model, request),
            *provider.lost_hints(request),
            *request.not_carried,
        ]
        dropped = list(dict.fromkeys(lost))  # a field can be both a dropped default and a caller's lost one
        if obs is not None:
            obs.model, obs.provider = model.id, model.provider
            obs.first_event_at = answered
            obs.dropped_params = dropped
        events = _relay(state, model, request, first, upstream, obs)
        if obs is not None:
            obs.relay = events
        return StreamStart(model=model, dropped_params=dropped, events=events, complete=isinstance(first[-1], Finish))


async def _first_batch(
    provider: Provider, model: CatalogueModel, request: ChatRequest, whole: bool
) -> tuple[Sequence[StreamEvent], AsyncIterator[Sequence[StreamEvent]]]:
    reply = provider.complete(model, request) if whole else provider.stream(model, request)
    upstream = reply.__aiter__()
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        raise UpstreamProtocolError(model.provider, "the reply ended before it started") from None
    except BaseException:
        await _close(upstream)
        raise
    return first, upstream


async def _relay(
    state: GatewayState,
    model: CatalogueModel,
    request: ChatRequest,
    first: Sequence[StreamEvent],
    rest: AsyncIterator[Sequence[StreamEvent]],
    obs: Observation | None,
) -> AsyncGenerator[Sequence[StreamEvent], None]:
    """The reply as the client gets it; counts it in flight and records how it ended.

    A reply that fails or is cut before its usage is known is charged an estimate (for the ledger and the
    key's budget): the prompt's, and one token per event relayed, as the adapters estimate a completion."""
    metrics = state.metrics
    metrics.streams_in_flight.inc()
    register_relay(obs)  # a pushed batch is counted in ``obs.relayed_events`` as below
    outcome = "cancelled"  # unless it ends otherwise: the client went away (generator closed)
    usage = None
    finish: Finish | None = None
    try:
        # A Finish is always the last event of the last batch.
        if isinstance(first[-1], Finish):
            finish = first[-1]
            usage, outcome = finish.usage, "ok"
        if obs is not None:  # counted before it is handed on: a client gone meanwhile may have it
            obs.relayed_events += len(first)
        yield first
        async for batch in rest:
            last = batch[-1]
            if isinstance(last, Finish):
                # The reply is complete with its Finish; a consumer may stop reading right there.
                finish = last
                usage, outcome = last.usage, "ok"
            if obs is not None:
                obs.relayed_events += len(batch)
            yield batch
        outcome = "ok"
    except ModelgateError as exc:
        outcome = "stream_error"
        _record_failure(state, model, exc)
        if obs is not None:
            obs.error = exc.message
        raise
    except Exception:
        outcome = "stream_error"
        raise
    finally:
        # Runs on normal end, on error, and when the client disconnects (the encoder is closed or
        # cancelled): closing the provider's generator closes the upstream response.
        if outcome == "cancelled" and obs is not None and obs.cut_reason is not None:
            outcome, obs.error = "stream_error", obs.cut_reason  # closed by a layer that ended the reply itself
        metrics.streams_in_flight.dec()
        metrics.observe_upstream(model.provider, model.id, outcome)
        if usage is None and obs is not None and obs.relayed_events:
            usage = Usage(estimate_prompt_tokens(request.messages), obs.relayed_events, estimated=True)
        if usage is not None:
            metrics.observe_tokens(model.provider, model.id, usage.prompt_tokens, usage.completion_tokens)
        if obs is not None:
            obs.stream_outcome = outcome
            obs.relay = None
            if usage is not None:
                obs.prompt_tokens, obs.completion_tokens = usage.prompt_tokens, usage.completion_tokens
                obs.usage_estimated = usage.estimated
                obs.reasoning_tokens = usage.reasoning_tokens
                obs.cached_tokens = usage.cached_tokens
                obs.reported_cost = usage.cost
            if obs.trace is not None:
                obs.trace.end_attempt(usage, finish.reason if finish else None, outcome, obs.error)
        await _close(rest)


def _record_failure(state: GatewayState, model: CatalogueModel, exc: ModelgateError) -> None:
    """A failure that says the upstream is unwell goes on the status board (``/api/status``): against the model,
    and in its provider's run of failures only when it is the provider's (``resilience.provider_wide``)."""
    if counts_as_failure(exc):
        state.status.record(
            model.provider, model.id, ok=False, reason=exc.public_reason, provider_wide=provider_wide(exc)
        )


async def _close(iterator: AsyncIterator[Sequence[StreamEvent]]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
