"""Dagster resources: configuration from the environment, read when a run starts.

Every field may be set in the launchpad; left empty, it falls back to the environment
variable named in its description, and then to a default that works with no set-up
(demo data, offline analyst). The API key is only ever read through `EnvVar` at run
time: it never enters run config, a config snapshot, a log line or a report.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, ConfigurableResource, EnvVar, InputContext, OutputContext
from pydantic import Field

from agent_reports.core import settings
from agent_reports.core.analyst import CachedAnalyst, OfflineAnalyst, OpenAIAnalyst, ResponseCache
from agent_reports.core.budget import TokenBudget
from agent_reports.core.delivery import (
    DEFAULT_FROM,
    SMTP_HOST,
    SMTP_PASSWORD,
    SMTP_USER,
    DeliveryLedger,
    EmailSender,
    Notifier,
    Outbox,
    WebhookSender,
)
from agent_reports.core.files import write_atomic
from agent_reports.core.output_modes import MODES, mode_for
from agent_reports.core.prices import parse_prices
from agent_reports.core.sources import DemoSource, FileSource, Source


class DataSourceResource(ConfigurableResource):
    """Where the analyses read their input."""

    kind: str | None = Field(
        default=None, description="demo | files (env AGENT_REPORTS_SOURCE, default demo)"
    )
    data_dir: str | None = Field(
        default=None,
        description="drop folder for `files` (env AGENT_REPORTS_DATA_DIR, default data)",
    )
    demo_seed: int = Field(default=7, description="seed of the demo generator")

    def get(self) -> Source:
        kind = self.kind or settings.env("AGENT_REPORTS_SOURCE", "demo")
        data_dir = Path(self.data_dir) if self.data_dir else settings.data_dir()
        if kind == "demo":  # its logs go where a user's would, and are read the same way
            return DemoSource(self.demo_seed, logs_dir=data_dir / "logs")
        if kind == "files":
            return FileSource(data_dir)
        raise ValueError(f"AGENT_REPORTS_SOURCE must be 'demo' or 'files', not {kind!r}")


class AnalystResource(ConfigurableResource):
    """The LLM analyst, with its response cache; offline when no API key is set."""

    mode: str | None = Field(
        default=None,
        description="auto | openai | offline (env AGENT_REPORTS_ANALYST, default auto: "
        "openai when OPENAI_API_KEY is set)",
    )
    model: str | None = Field(
        default=None, description="model name (env AGENT_REPORTS_MODEL, default gpt-4o-mini)"
    )
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (env OPENAI_BASE_URL)"
    )
    timeout_seconds: float | None = Field(
        default=None,
        description="per attempt, streamed reply included "
        "(env AGENT_REPORTS_LLM_TIMEOUT_SECONDS, default 60)",
    )
    report_seconds: float | None = Field(
        default=None,
        description="total time for one report, every attempt included "
        "(env AGENT_REPORTS_LLM_REPORT_SECONDS, default 300)",
    )
    max_tokens: int | None = Field(
        default=None,
        description="completion tokens per request (env AGENT_REPORTS_LLM_MAX_TOKENS, "
        "default 1024)",
    )
    output_mode: str | None = Field(
        default=None,
        description=f"structured output: one of {', '.join(MODES)}, or per model "
        "`pattern=mode,...` (env AGENT_REPORTS_LLM_OUTPUT_MODE, default json_schema_strict; "
        "a server that refuses it moves the run to the next mode)",
    )
    instructions_in: str | None = Field(
        default=None,
        description="both | system | user: where the instructions go "
        "(env AGENT_REPORTS_LLM_INSTRUCTIONS_IN, default both)",
    )
    price_per_million: str | None = Field(
        default=None,
        description="USD per million input,output tokens, e.g. 0.15,0.60 "
        "(env AGENT_REPORTS_LLM_PRICE_PER_MILLION, default the genai-prices table)",
    )
    max_retries: int | None = Field(
        default=None,
        description="HTTP retries on 429/5xx/timeouts, exponential backoff with jitter "
        "(env AGENT_REPORTS_LLM_MAX_RETRIES, default 4)",
    )
    tool_steps: int | None = Field(
        default=None,
        description="tool calls the analyst may make over its window's data before it "
        "answers (env AGENT_REPORTS_LLM_TOOL_STEPS, default 0: no tools)",
    )
    tool_tokens: int | None = Field(
        default=None,
        description="tokens one report's investigation may spend "
        "(env AGENT_REPORTS_LLM_TOOL_TOKENS, default 20000)",
    )
    invalid_reply_attempts: int = Field(default=3, description="asks for a reply that fits")
    degrade_on_failure: bool = Field(
        default=True, description="when the model fails, write the offline report, flagged"
    )
    fail_on_llm_error: str | None = Field(
        default=None,
        description="analyses that fail instead of degrading, comma-separated, or 'all' "
        "(env AGENT_REPORTS_FAIL_ON_LLM_ERROR, default none)",
    )
    max_concurrency: int = Field(default=8, description="parallel requests in a range run")
    cache_dir: str | None = Field(
        default=None,
        description="response cache (env AGENT_REPORTS_CACHE_DIR, default <state>/llm_cache)",
    )

    def resolved_mode(self) -> str:
        mode = self.mode or settings.env("AGENT_REPORTS_ANALYST", "auto")
        if mode not in ("auto", "openai", "offline"):
            raise ValueError(f"AGENT_REPORTS_ANALYST must be auto, openai or offline, not {mode!r}")
        if mode == "auto":
            return "openai" if EnvVar("OPENAI_API_KEY").get_value() else "offline"
        return mode

    def get(self) -> CachedAnalyst:
        mode = self.resolved_mode()
        cache_dir = self.cache_dir or settings.env("AGENT_REPORTS_CACHE_DIR")
        cache = ResponseCache(Path(cache_dir) if cache_dir else settings.state_dir() / "llm_cache")
        if mode == "offline":
            return CachedAnalyst(OfflineAnalyst(), cache)
        api_key = EnvVar("OPENAI_API_KEY").get_value()
        if not api_key:
            raise ValueError("AGENT_REPORTS_ANALYST=openai needs OPENAI_API_KEY in the environment")
        model = self.model or settings.env("AGENT_REPORTS_MODEL", "gpt-4o-mini")
        output_mode = self.output_mode or settings.env("AGENT_REPORTS_LLM_OUTPUT_MODE")
        mode_for(model, output_mode)  # a typo fails here, before any request
        budget = TokenBudget.from_env()
        inner = OpenAIAnalyst(
            model=model,
            api_key=api_key,
            base_url=self.base_url or settings.env("OPENAI_BASE_URL"),
            timeout_seconds=_number(
                self.timeout_seconds, "AGENT_REPORTS_LLM_TIMEOUT_SECONDS", 60.0, float
            ),
            max_retries=_number(self.max_retries, "AGENT_REPORTS_LLM_MAX_RETRIES", 4, int),
            invalid_reply_attempts=self.invalid_reply_attempts,
            prices=parse_prices(
                self.price_per_million or settings.env("AGENT_REPORTS_LLM_PRICE_PER_MILLION")
            ),
            budget=budget,
            output_mode=output_mode,
            max_tokens=_number(self.max_tokens, "AGENT_REPORTS_LLM_MAX_TOKENS", 1024, int),
            report_seconds=_number(
                self.report_seconds, "AGENT_REPORTS_LLM_REPORT_SECONDS", 300.0, float
            ),
            instructions_in=self.instructions_in
            or settings.env("AGENT_REPORTS_LLM_INSTRUCTIONS_IN", "both"),
            tool_steps=_number(self.tool_steps, "AGENT_REPORTS_LLM_TOOL_STEPS", 0, int),
            tool_tokens=_number(self.tool_tokens, "AGENT_REPORTS_LLM_TOOL_TOKENS", 20_000, int),
        )
        if budget.has_usd_limits and not inner.pricing.known:
            raise ValueError(
                f"a USD budget is set (AGENT_REPORTS_USD_BUDGET...) but the price of {model} "
                "is unknown: set AGENT_REPORTS_LLM_PRICE_PER_MILLION=input,output"
            )
        return CachedAnalyst(
            inner,
            cache,
            degrade_on_failure=self.degrade_on_failure,
            fail_on_error=self.failing_analyses(),
        )

    def failing_analyses(self) -> set[str]:
        """Analyses whose LLM failure fails the run: a typo must not silently degrade."""
        text = self.fail_on_llm_error or settings.env("AGENT_REPORTS_FAIL_ON_LLM_ERROR", "")
        names = {name.strip().lower() for name in text.split(",") if name.strip()}
        known = settings.analysis_names()
        unknown = sorted(names - {"all", *known})
        if unknown:
            raise ValueError(
                f"AGENT_REPORTS_FAIL_ON_LLM_ERROR names unknown analyses {unknown}; "
                f"use 'all' or some of {list(known)}"
            )
        return names


def _number(value: float | None, env_name: str, default: float, kind: type) -> Any:
    """The configured value, else the environment's, else the default; never negative."""
    if value is None:
        text = settings.env(env_name)
        try:
            value = kind(text) if text is not None else default
        except ValueError:
            raise ValueError(f"{env_name} must be a number, not {text!r}") from None
    if value < 0:
        raise ValueError(f"{env_name} must not be negative, got {value}")
    return value


class DeliveryResource(ConfigurableResource):
    """Email (SMTP) and webhook delivery with its ledger; every setting read at run time.

    Secrets (the SMTP password, the webhook URL and token) are read only through `EnvVar`
    when a run sends, never from run config. Without AGENT_REPORTS_SMTP_HOST e-mails are
    written to the outbox (core/delivery.py) instead of sent; without
    AGENT_REPORTS_WEBHOOK_URL there is no webhook.
    """

    smtp_host: str | None = Field(default=None, description="env AGENT_REPORTS_SMTP_HOST")
    smtp_port: int | None = Field(
        default=None, description="env AGENT_REPORTS_SMTP_PORT (default 587, 465 for ssl, 25)"
    )
    smtp_security: str | None = Field(
        default=None, description="none | starttls | ssl (env AGENT_REPORTS_SMTP_SECURITY)"
    )
    smtp_user: str | None = Field(default=None, description="env AGENT_REPORTS_SMTP_USER")
    smtp_from: str | None = Field(
        default=None, description="env AGENT_REPORTS_SMTP_FROM (default agent-reports@localhost)"
    )
    ledger_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (env AGENT_REPORTS_LEDGER_URL, default "
        "sqlite under the state dir)",
    )

    def smtp_settings(self) -> dict[str, str | None]:
        """Every AGENT_REPORTS_SMTP_* setting by its variable name: the resource field when
        set, else the environment (the password only from the environment)."""
        fields = {
            "HOST": self.smtp_host,
            "PORT": self.smtp_port,
            "SECURITY": self.smtp_security,
            "USER": self.smtp_user,
            "FROM": self.smtp_from,
        }
        values = {
            f"AGENT_REPORTS_SMTP_{name}": str(value)
            if value
            else settings.env(f"AGENT_REPORTS_SMTP_{name}")
            for name, value in fields.items()
        }
        return {**values, SMTP_PASSWORD: EnvVar(SMTP_PASSWORD).get_value()}

    def email_sender(self) -> EmailSender | None:
        """SMTP when AGENT_REPORTS_SMTP_HOST is set, else None (e-mails go to the outbox)."""
        values = self.smtp_settings()
        if not values[SMTP_HOST]:
            return None
        security = values["AGENT_REPORTS_SMTP_SECURITY"] or "starttls"
        default_port = {"ssl": "465", "starttls": "587"}.get(security, "25")
        return EmailSender(
            host=values[SMTP_HOST],
            port=int(values["AGENT_REPORTS_SMTP_PORT"] or default_port),
            sender=values["AGENT_REPORTS_SMTP_FROM"] or DEFAULT_FROM,
            security=security,
            user=values[SMTP_USER],
            password=values[SMTP_PASSWORD],
        )

    def outbox(self, reports_root: Path) -> Outbox:
        """Where e-mails are written when no SMTP host is set: `<reports>/outbox/`."""
        sender = self.smtp_settings()["AGENT_REPORTS_SMTP_FROM"] or DEFAULT_FROM
        return Outbox(reports_root / "outbox", sender)

    def webhook_sender(self) -> WebhookSender | None:
        url = EnvVar("AGENT_REPORTS_WEBHOOK_URL").get_value()
        token = EnvVar("AGENT_REPORTS_WEBHOOK_TOKEN").get_value()
        return WebhookSender(url, token or None) if url else None

    def ledger(self) -> DeliveryLedger:
        return DeliveryLedger(self.ledger_url or settings.env("AGENT_REPORTS_LEDGER_URL"))

    def notifier(self, webhook: bool = True) -> Notifier:
        """The ledger plus the configured channels (`webhook=False`: email only)."""
        return Notifier(
            self.ledger(), self.email_sender(), self.webhook_sender() if webhook else None
        )


class ReportStoreResource(ConfigurableResource):
    """Where report files go: `<root>/<analysis>/<partition>.{json,md,html}`."""

    root: str | None = Field(
        default=None, description="env AGENT_REPORTS_REPORTS_DIR, default reports"
    )

    def path(self) -> Path:
        return Path(self.root).resolve() if self.root else settings.reports_dir()


class PartitionRangeIOManager(ConfigurableIOManager):
    """Stores a partitioned asset's value one file per partition, for one partition or many.

    A partitioned asset returns `{partition_key: value}` for the partitions of its run and
    receives its inputs the same way. One code path then serves a scheduled run of one
    window and a single-run backfill of a whole range (Dagster's default IO manager
    refuses a multi-partition output).
    """

    base_dir: str | None = Field(
        default=None, description="env AGENT_REPORTS_STATE_DIR/assets, default state/assets"
    )

    def _folder(self, context: InputContext | OutputContext) -> Path:
        root = Path(self.base_dir) if self.base_dir else settings.state_dir() / "assets"
        return root.joinpath(*context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        folder = self._folder(context)
        if not context.has_asset_partitions:
            write_atomic(folder / "value.pickle", pickle.dumps(obj))
            return
        keys = set(context.asset_partition_keys)
        if not isinstance(obj, dict) or set(obj) != keys:
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a dict keyed by exactly "
                f"its run's partitions ({len(keys)}), got {type(obj).__name__}"
            )
        for key, value in obj.items():
            write_atomic(folder / f"{key}.pickle", pickle.dumps(value))

    def load_input(self, context: InputContext) -> Any:
        folder = self._folder(context)
        if not context.has_asset_partitions:
            return pickle.loads((folder / "value.pickle").read_bytes())
        values = {}
        for key in context.asset_partition_keys:
            path = folder / f"{key}.pickle"
            if not path.exists():
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} partition {key} has no stored value "
                    f"at {path}: materialise it first"
                )
            values[key] = pickle.loads(path.read_bytes())
        return values
