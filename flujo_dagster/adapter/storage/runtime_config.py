"""What `AgentRuntime` holds: its Dagster config (model strings), the Python-only values that config cannot or
must not carry (model objects, declared prices, `ProviderSettings`), and how a `provider:model` string becomes a
model."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.providers import Provider, infer_provider, infer_provider_class

from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, model_id_of
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.pricing.prices import OFFLINE_PROVIDERS, Price

__all__ = [
    "OFFLINE_PROVIDERS",
    "TEST_MODEL",
    "ModelChoice",
    "ProviderSettings",
    "PythonOnly",
    "RuntimeSettings",
    "build_model",
    "canonical_model_id",
    "check_model_strings",
    "check_providers",
    "missing_key",
    "model_secret",
    "split_choices",
]

ModelChoice = Model | str
TEST_MODEL = "test"
"""pydantic-ai's name for `TestModel` (`infer_model("test")`): offline, and answering as `test:test`."""
_GATEWAY = "gateway/"


@dataclass(frozen=True, repr=False, kw_only=True)
class ProviderSettings:
    """How agent steps reach one provider (the key in `AgentRuntime(providers=...)` is the provider part of
    `provider:model`, e.g. `openai`), set in code only: no run's config can set it. Only the settings given are
    passed to pydantic-ai's provider class. Give `api_key=EnvVar("OPENAI_API_KEY")` to keep the key in the
    environment (read when a model is built); a key is never shown in a repr."""

    api_key: str | None = None
    base_url: str | None = None

    def __repr__(self) -> str:
        return f"ProviderSettings(api_key={_shown(self.api_key, secret=True)}, base_url={_shown(self.base_url)})"

    def secret(self) -> str | None:
        """The API key, an `EnvVar` read now (None when unset or not given): redacted from call records."""
        key = self.api_key
        return key.get_value() if isinstance(key, EnvVar) else key

    def provider_kwargs(self, provider: str) -> dict[str, str]:
        """The settings given, as keyword arguments of the provider class, an `EnvVar` read now;
        `ConfigurationError` naming the variable and `provider` when it is not set."""
        given = {"api_key": self.api_key, "base_url": self.base_url}
        kwargs = {}
        for name, value in given.items():
            if isinstance(value, EnvVar):
                resolved = value.get_value()
                if resolved is None:
                    raise ConfigurationError(
                        f"agent_runtime providers[{provider!r}] {name}: environment variable "
                        f"{value.env_var_name!r} is not set; set it in the code location's environment"
                    )
                value = resolved
            if value is not None:
                kwargs[name] = value
        return kwargs


def _shown(value: str | None, *, secret: bool = False) -> str:
    """A setting for a repr: an `EnvVar` by name, a literal secret as `<set>`."""
    if value is None:
        return "None"
    if isinstance(value, EnvVar):
        return f"EnvVar({value.env_var_name!r})"
    return "<set>" if secret else repr(value)


@dataclass(frozen=True)
class PythonOnly:
    """What an `AgentRuntime` holds outside its Dagster config, as given to its constructor: model objects
    (which no run config can express), declared prices and provider settings (which no run may change)."""

    model: Model | None = None
    step_models: Mapping[str, Model] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    """Provider settings: code only, so that no run's config can choose where a key is sent."""
    built_step_names: frozenset[str] = frozenset()
    """The step names `step_models` held when built in Python (for other pipelines of the location, maybe)."""
    instrument: InstrumentationSettings | None = None
    """pydantic-ai's OpenTelemetry instrumentation of every agent call (None: off)."""


class RuntimeSettings(ConfigurableResource):  # type: ignore[type-arg]
    """The settings of `AgentRuntime`: its Dagster config fields, and the Python-only values given to its
    constructor, which survive every copy Dagster makes of the resource."""

    model: str | None = Field(
        default=None, description="A 'provider:model' (or 'test') that every agent step runs on, e.g. openai:gpt-5."
    )
    step_models: dict[str, str] = Field(
        default_factory=dict, description="A 'provider:model' per agent step name; wins over `model`."
    )
    _python: PythonOnly = PrivateAttr(default_factory=PythonOnly)

    def __init__(
        self,
        *,
        model: ModelChoice | None = None,
        step_models: Mapping[str, ModelChoice] | None = None,
        prices: Mapping[str, Price] | None = None,
        providers: Mapping[str, ProviderSettings] | None = None,
        instrument: bool | InstrumentationSettings = False,
    ) -> None:
        name, names, obj, objs = split_choices(model, step_models)
        check_model_strings(name, names)
        super().__init__(model=name, step_models=names)
        settings = dict(providers or {})
        check_providers(settings)
        built = frozenset(step_models or {})
        self._python = PythonOnly(
            model=obj,
            step_models=objs,
            prices=dict(prices or {}),
            providers=settings,
            built_step_names=built,
            instrument=_instrumentation(instrument),
        )

    def _with_updated_values(self, values: Mapping[str, Any] | None) -> Self:
        """The copy Dagster makes for a run, with the run's config: Dagster rebuilds a resource from its config
        fields alone (`self.__class__(**fields)`), so the Python-only values are carried over here."""
        updated = super()._with_updated_values(values)
        assert isinstance(updated, type(self))
        updated._python = self._python
        return updated

    @property
    def providers(self) -> dict[str, ProviderSettings]:
        """The provider settings given in code, by provider name."""
        return dict(self._python.providers)

    @property
    def instrumentation(self) -> InstrumentationSettings | None:
        """pydantic-ai's OpenTelemetry instrumentation of agent calls, when switched on in code (`instrument=`)."""
        return self._python.instrument

    def secret_values(self) -> list[str]:
        """The API keys the provider settings hold or name (environment variables read now) and those of the
        model objects given here: redacted from call records."""
        python = self._python
        keys = [settings.secret() for settings in python.providers.values()]
        keys += [model_secret(m) for m in (python.model, *python.step_models.values())]
        return [k for k in keys if k]

    @property
    def prices(self) -> dict[str, Price]:
        """The prices declared here, by `provider:model`."""
        return dict(self._python.prices)

    def python_only_summary(self) -> str:
        """What this runtime holds outside its config (so outside its repr), for messages: model objects by
        `provider:model` and the models it declares prices for; empty when it holds none."""
        python = self._python
        parts = []
        if python.model is not None:
            parts.append(f"model object {model_id_of(python.model)}")
        if python.step_models:
            parts.append(f"step model objects { {k: model_id_of(m) for k, m in python.step_models.items()} }")
        if python.prices:
            parts.append(f"prices for {sorted(python.prices)}")
        if python.providers:
            parts.append(f"providers {python.providers}")
        return "; ".join(parts)

    def configured_models(self) -> list[ModelChoice]:
        """Every model configured here, strings and objects."""
        python = self._python
        return [m for m in (self.model, python.model, *self.step_models.values(), *python.step_models.values()) if m]

    def choice_for(self, step_name: str) -> ModelChoice | None:
        """The model configured for `step_name`: per step before for all, a config string before an object."""
        python = self._python
        slots = (self.step_models.get(step_name), python.step_models.get(step_name), self.model, python.model)
        return next((c for c in slots if c is not None), None)

    def check_step_models(self, pipeline: Pipeline) -> None:
        """`ConfigurationError` when a run's config names in `step_models` a step that is no agent step of
        `pipeline` (a typo would otherwise change nothing); names built in Python may be other pipelines'."""
        agent_steps = {s.name for _, s in walk(pipeline.steps, pipeline.name) if isinstance(s, AgentStep)}
        unknown = sorted(set(self.step_models) - agent_steps - self._python.built_step_names)
        if unknown:
            raise ConfigurationError(
                f"agent_runtime step_models names {unknown}, which are no agent steps of pipeline "
                f"{pipeline.name!r} (its agent steps: {sorted(agent_steps)}); fix the step names in the run's config"
            )

    def build_model(self, choice: ModelChoice, *, where: str) -> Model:
        """`choice` as a model object: a string built with the provider settings configured here."""
        return choice if isinstance(choice, Model) else build_model(choice, self.providers, where=where)


def _instrumentation(instrument: object) -> InstrumentationSettings | None:
    """The instrumentation `AgentRuntime(instrument=...)` asks for: `True` is pydantic-ai's, without message
    content (spans go to a collector unredacted); an `InstrumentationSettings` as given; `False` none."""
    if isinstance(instrument, InstrumentationSettings):
        return instrument
    if instrument is True:
        return InstrumentationSettings(include_content=False, include_binary_content=False)
    if instrument is False:
        return None
    raise ConfigurationError(
        f"AgentRuntime(instrument=...) is a {type(instrument).__name__}; give True, False or pydantic-ai's "
        "InstrumentationSettings(...)"
    )


def model_secret(model: object) -> str | None:
    """The API key a model object's client holds, when it exposes one as `client.api_key` (OpenAI, Anthropic and
    compatible providers' clients do)."""
    key = getattr(getattr(model, "client", None), "api_key", None) if isinstance(model, Model) else None
    return key if isinstance(key, str) else None


def split_choices(
    model: ModelChoice | None, step_models: Mapping[str, ModelChoice] | None
) -> tuple[str | None, dict[str, str], Model | None, dict[str, Model]]:
    """(`model` if a string, the string `step_models`, `model` if a model object, the object `step_models`);
    `ConfigurationError` for anything else."""
    steps = dict(step_models or {})
    for where, value in [("model", model), *((f"step_models[{k!r}]", v) for k, v in steps.items())]:
        if value is not None and not isinstance(value, ModelChoice):
            raise ConfigurationError(
                f"AgentRuntime({where}=...) is a {type(value).__name__}; give a 'provider:model' string or a "
                "pydantic-ai Model object (FunctionModel, TestModel, ...)"
            )
    return (
        model if isinstance(model, str) else None,
        {k: v for k, v in steps.items() if isinstance(v, str)},
        model if isinstance(model, Model) else None,
        {k: v for k, v in steps.items() if isinstance(v, Model)},
    )


def check_providers(providers: Mapping[str, ProviderSettings]) -> None:
    """`ConfigurationError` for a provider pydantic-ai does not know or cannot load, or a setting its provider
    class does not take."""
    for name, settings in providers.items():
        where = f"agent_runtime providers[{name!r}]"
        if not isinstance(settings, ProviderSettings) or not all(
            isinstance(v, str | None) for v in (settings.api_key, settings.base_url)
        ):
            raise ConfigurationError(
                f"{where} is a {type(settings).__name__}; give ProviderSettings(api_key=EnvVar('NAME'), base_url='...')"
            )
        if name.startswith(_GATEWAY):
            raise ConfigurationError(
                f"{where}: gateway providers cannot be configured here; configure {name!r} "
                "through pydantic-ai's gateway environment variables"
            )
        try:
            provider_class = infer_provider_class(name)
        except (ValueError, ImportError) as exc:
            raise ConfigurationError(f"{where}: {exc}") from exc
        accepted = inspect.signature(provider_class).parameters
        refused = sorted(k for k in ("api_key", "base_url") if getattr(settings, k) is not None and k not in accepted)
        if refused:
            raise ConfigurationError(
                f"{where}: pydantic-ai's {provider_class.__name__} does not take {', '.join(refused)}; leave "
                f"{'them' if len(refused) > 1 else 'it'} out"
            )


def check_model_strings(model: str | None, step_models: Mapping[str, str]) -> None:
    """`ConfigurationError` for a model string that embeds a URL (`://` or `//`, as a Hugging Face endpoint
    model name may): a run's config may choose models, never where a provider's key is sent."""
    for where, value in [("model", model), *((f"step_models[{k!r}]", v) for k, v in step_models.items())]:
        if value is not None and ("//" in value or any(c.isspace() for c in value)):
            raise ConfigurationError(
                f"agent_runtime {where} {value!r} embeds a URL or whitespace; give a 'provider:model' name (a base "
                "URL is set in code only: AgentRuntime(providers={...: ProviderSettings(base_url=...)}))"
            )


def _provider_factory(providers: Mapping[str, ProviderSettings]) -> Callable[[str], Provider[Any]]:
    """pydantic-ai's provider inference, with the settings of `providers` for the providers they name."""

    def provider(name: str) -> Provider[Any]:
        settings = providers.get(name)
        if settings is None:
            return infer_provider(name)
        return infer_provider_class(name)(**settings.provider_kwargs(name))

    return provider


_MISSING_KEY = re.compile(r"Set the `(?P<var>[A-Z][A-Z0-9_]*)`(?: or `[A-Z][A-Z0-9_]*`)? environment variable")
"""How pydantic-ai's providers say that their API key is missing (`missing_api_key_error`), naming its variable."""


def missing_key(where: str, choice: str, variable: str, provider: str, settings: ProviderSettings | None) -> str:
    """The one line that says which step's model has no API key, and what to set: the variable, or the
    `AgentRuntime` provider setting (the variable an `EnvVar` setting reads, when one is configured)."""
    if settings is not None and isinstance(settings.api_key, EnvVar):
        return (
            f"{where}: model {choice} has no API key: set {variable} (read by the agent_runtime resource's "
            f'providers["{provider}"] api_key=EnvVar("{variable}"))'
        )
    return (
        f"{where}: model {choice} has no API key: set {variable}, or "
        f'AgentRuntime(providers={{"{provider}": ProviderSettings(api_key=EnvVar("..."))}})'
    )


def build_model(choice: str, providers: Mapping[str, ProviderSettings], *, where: str) -> Model:
    """The model `choice` (`provider:model`, or `test`) names, its provider built with `providers`' settings;
    `ConfigurationError` naming `where` when it cannot be built: for a missing API key one line naming the
    variable to set (`missing_key`), else the reason. Neither is chained to the provider's internals."""
    provider = choice.partition(":")[0]
    settings = providers.get(provider)
    key = None if settings is None else settings.api_key
    if isinstance(key, EnvVar) and key.get_value() is None:
        raise ConfigurationError(missing_key(where, choice, key.env_var_name, provider, settings))
    try:
        return infer_model(choice, provider_factory=_provider_factory(providers))
    except UserError as exc:
        found = _MISSING_KEY.search(str(exc))
        if found is not None and "api_key" in str(exc):
            raise ConfigurationError(missing_key(where, choice, found["var"], provider, None)) from None
        problem = str(exc)
    except (ValueError, ImportError, TypeError, ConfigurationError) as exc:
        problem = str(exc)
    raise ConfigurationError(
        f"{where}: model {choice!r} cannot be built: {_sentence(problem)} Give a 'provider:model' string (or 'test') "
        "and check the agent_runtime resource's providers set in code (api_key, base_url)"
    )


def _sentence(text: str) -> str:
    """`text` ended as a sentence: pydantic-ai's own reason may end in a question ("Did you mean 'x'?", which 2.62
    adds for more names than 2.78) or in nothing ("Unknown model: gpt-4o")."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else f"{text}."


def canonical_model_id(model_id: str) -> str:
    """`model_id`, with pydantic-ai's bare `test` written as the id its `TestModel` answers with."""
    return f"{TEST_MODEL}:{TEST_MODEL}" if model_id == TEST_MODEL else model_id
