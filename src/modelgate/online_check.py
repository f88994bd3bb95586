"""``modelgate check-config --online``: a catalogue file checked against the providers' own listings.

Before a catalogue is deployed, every provider its models use is asked once for its free model listing
(the same probes ``/api/status`` runs, ``status.probe_catalogue``; never a generation), so a model the
provider no longer lists — OpenRouter's ``:free`` variants come and go — is caught before users meet it.

For each model: whether its provider lists its upstream id, and the provider's context window (where the
listing states one) beside what the catalogue may send, ``truncate + max_new_tokens``. The check fails
when a model is missing from its provider's listing or its provider cannot be reached (with this
environment's base URLs and credentials: a provider without credentials cannot be checked, and fails).
A window smaller than the catalogue's sum is flagged but does not fail the check: the provider trims or
refuses only the longest prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelgate.status import probe_catalogue

if TYPE_CHECKING:
    from modelgate.catalogue import Catalogue, CatalogueModel
    from modelgate.providers import ProbeResult
    from modelgate.settings import Settings


@dataclass(frozen=True, slots=True)
class ModelCheck:
    model: CatalogueModel
    #: True or False as the provider's listing says; None when it could not be asked or cannot tell.
    listed: bool | None
    #: The provider's context window for the model, in tokens, when its listing states one.
    context_length: int | None
    #: Why the model fails the check (missing, unreachable, unconfigured), or None.
    problem: str | None = None
    #: Something worth reading that does not fail the check (no listing, an unreadable one).
    note: str | None = None

    @property
    def requested(self) -> int:
        """The most tokens the catalogue lets one request occupy: the kept prompt plus the reply."""
        p = self.model.parameters
        return p.truncate + p.max_new_tokens

    @property
    def over_window(self) -> int:
        """Tokens by which ``requested`` exceeds the provider's window (0 when it fits or is unknown)."""
        return max(0, self.requested - self.context_length) if self.context_length is not None else 0


async def check_online(settings: Settings, catalogue: Catalogue) -> list[ModelCheck]:
    """Probe every provider the catalogue uses, once, and judge each model (in the catalogue's order)."""
    from modelgate.app import GatewayState

    state = GatewayState(settings, catalogue)
    state.open_upstreams()
    try:
        results = await probe_catalogue(state, catalogue)
    finally:
        await state.close_upstreams()
    return [_judge(model, catalogue, settings, results) for model in catalogue.models]


def _judge(
    model: CatalogueModel, catalogue: Catalogue, settings: Settings, results: dict[str, ProbeResult | None]
) -> ModelCheck:
    missing = settings.missing_credentials(model.provider, catalogue.instance(model.provider).credential_variables)
    if missing:
        return ModelCheck(model, None, None, problem=f"not checked: set {' and '.join(missing)}")
    result = results.get(model.provider)
    if result is None:
        return ModelCheck(model, None, None, note=f"{model.provider} offers no free listing to check")
    if not result.reachable:
        return ModelCheck(model, None, None, problem=f"{model.provider} unreachable: {result.detail or 'no answer'}")
    if result.available_models is None:
        return ModelCheck(model, None, None, note=result.detail or "the listing cannot tell")
    window = result.context_lengths.get(model.upstream_model)
    if model.upstream_model not in result.available_models:
        return ModelCheck(model, False, None, problem=f"{model.provider} does not list '{model.upstream_model}'")
    return ModelCheck(model, True, window)


def failed(checks: list[ModelCheck]) -> list[ModelCheck]:
    return [check for check in checks if check.problem is not None]
