"""Side effects that must happen once: email and webhook delivery behind a durable ledger.

Every delivery has a `DeliveryKey` (report, partition, recipient, content fingerprint).
`DeliveryLedger.deliver_once` sends at most one successful message per key, across
re-runs, retries and processes; each recipient is its own key, so one refused address
never loses or repeats the others.

Which way a crash errs: **at least once.** The ledger row is written in the same
database transaction that is open while the message is sent, and committed only after
the send returned. A crash (or a failed ledger write) between the send and the commit
rolls the row back, so the retry sends again: a possible duplicate, never a silent
loss. An alert nobody receives is worse than one received twice, and the duplicate is
recognisable: the Message-ID (email) and the Idempotency-Key header (webhook) derive
from the key, so mail systems and webhook receivers can drop the copy. The open
transaction also holds a lock on the row (PostgreSQL) or the database (SQLite), so two
processes delivering the same key at once cannot both send.

Without an SMTP host the e-mails go to the **outbox** instead: each is written as an .eml
file with an HTML preview under `<reports>/outbox/`, and nothing is recorded in the
ledger, so configuring SMTP later still sends every window once. A configuration given
half-way (recipients or SMTP settings without a host, a user without a password) is
named by `incomplete_smtp_settings`, never left to a bare error.

Where an analysis needs a person's approval before its e-mails go out
(AGENT_REPORTS_APPROVAL_REQUIRED, ops/approval.py), the ledger's `approvals` table holds
one row per (report, partition, content fingerprint): `awaiting`, then `approved` with
who and when, or `superseded` when a newer version of the report awaits instead. It is
its own table, so ledgers created before it gain it without a migration.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_escape
import json
import logging
import re
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from agent_reports.core.files import write_atomic

log = logging.getLogger(__name__)

SECURITY_MODES = ("none", "starttls", "ssl")
SMTP_HOST = "AGENT_REPORTS_SMTP_HOST"
SMTP_USER = "AGENT_REPORTS_SMTP_USER"
SMTP_PASSWORD = "AGENT_REPORTS_SMTP_PASSWORD"
# Settings that mean "send through SMTP" when given without a host.
SMTP_SETTINGS_NEEDING_HOST = (
    "AGENT_REPORTS_SMTP_PORT",
    "AGENT_REPORTS_SMTP_SECURITY",
    SMTP_USER,
    SMTP_PASSWORD,
)
DEFAULT_FROM = "agent-reports@localhost"
# The outbox's addressee when no recipients are configured: RFC 5322's empty group.
PREVIEW_RECIPIENT = "undisclosed-recipients:;"


class DeliveryError(RuntimeError):
    """A send that did not go through; the message says why, without secrets."""


@dataclass(frozen=True)
class DeliveryKey:
    """What makes a delivery unique: sending the same key twice is a duplicate."""

    report: str
    partition: str
    recipient: str
    fingerprint: str

    @property
    def digest(self) -> str:
        text = "\x1f".join((self.report, self.partition, self.recipient, self.fingerprint))
        return hashlib.sha256(text.encode()).hexdigest()

    def message_id(self, domain: str = "agent-reports.local") -> str:
        """A Message-ID / idempotency key equal for every attempt of this key."""
        return f"<{self.digest[:32]}.{self.report}@{domain}>"


@dataclass(frozen=True)
class DeliveryOutcome:
    """`sent`, `already_sent` or `failed` (with the reason)."""

    key: DeliveryKey
    status: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("sent", "already_sent")


_metadata = sa.MetaData()
deliveries = sa.Table(
    "deliveries",
    _metadata,
    sa.Column("report", sa.String(100), primary_key=True),
    sa.Column("partition", sa.String(100), primary_key=True),
    sa.Column("recipient", sa.String(320), primary_key=True),
    sa.Column("fingerprint", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),  # sent | failed (sending: in flight)
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


approvals = sa.Table(
    "approvals",
    _metadata,
    sa.Column("report", sa.String(100), primary_key=True),
    sa.Column("partition", sa.String(100), primary_key=True),
    sa.Column("fingerprint", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),  # awaiting | approved | superseded
    sa.Column("previews", sa.Text, nullable=False),  # JSON {recipient: .eml path}
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("approver", sa.String(200)),
    sa.Column("comment", sa.Text),
    sa.Column("approved_at", sa.DateTime(timezone=True)),
)
AWAITING, APPROVED, SUPERSEDED = "awaiting", "approved", "superseded"


class ApprovalError(RuntimeError):
    """An approval that cannot be recorded: nothing awaits approval for that window."""


def default_ledger_url() -> str:
    from agent_reports.core import settings

    return settings.database_url("ledger.sqlite")


class DeliveryLedger:
    """Durable record of deliveries (SQLite by default, PostgreSQL via a URL)."""

    def __init__(self, url: str | None = None):
        url = url or default_ledger_url()
        args = {"timeout": 120} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=args)
        _metadata.create_all(self.engine)

    def _upsert(
        self, connection: sa.Connection, key: DeliveryKey, insert: dict, update: dict
    ) -> None:
        """Insert the key's row, or update the existing one: either way the row is locked."""
        dialect = connection.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            raise ValueError(f"the delivery ledger supports sqlite and postgresql, not {dialect}")
        row = {**_key_columns(key), "message_id": key.message_id(), "updated_at": _now(), **insert}
        statement = dialect_insert(deliveries).values(**row)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=list(_key_columns(key)), set_={"updated_at": _now(), **update}
            )
        )

    def status(self, key: DeliveryKey) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(deliveries).where(*_matches(key))).first()
        return None if row is None else dict(row._mapping)

    def entries(self, report: str | None = None) -> list[dict[str, Any]]:
        """All rows (for audits and tests), oldest key first."""
        query = sa.select(deliveries).order_by(*deliveries.primary_key.columns)
        if report is not None:
            query = query.where(deliveries.c.report == report)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def deliver_once(
        self, key: DeliveryKey, send: Callable[[], None], resend: bool = False
    ) -> DeliveryOutcome:
        """Call `send` unless `key` was delivered before (or `resend`); record the result.

        The row is written (locking it) before `send` and committed after it, in one
        transaction: see the module docstring for why a crash in between resends.
        """
        with self.engine.begin() as connection:
            # Write first: the write takes the lock, so the read after it cannot be stale.
            self._upsert(connection, key, {"status": "sending", "attempts": 0}, {})
            status = connection.execute(
                sa.select(deliveries.c.status).where(*_matches(key))
            ).scalar_one()
            if status == "sent" and not resend:
                connection.rollback()
                return DeliveryOutcome(key, "already_sent")
            try:
                send()
            except Exception as error:
                connection.rollback()
                reason = str(error) if isinstance(error, DeliveryError) else type(error).__name__
                self._record_failure(key, reason)
                return DeliveryOutcome(key, "failed", reason)
            connection.execute(
                deliveries.update()
                .where(*_matches(key))
                .values(
                    status="sent", error=None, attempts=deliveries.c.attempts + 1, updated_at=_now()
                )
            )
        return DeliveryOutcome(key, "sent")

    def request_approval(
        self, report: str, partition: str, fingerprint: str, previews: Mapping[str, str]
    ) -> dict[str, Any]:
        """Record that this version of the window's e-mails awaits approval (a version
        already approved stays approved) and supersede any other version still awaiting.
        Returns the row as it is now."""
        window = [approvals.c.report == report, approvals.c.partition == partition]
        this = [*window, approvals.c.fingerprint == fingerprint]
        with self.engine.begin() as connection:
            connection.execute(
                approvals.update()
                .where(*window, approvals.c.fingerprint != fingerprint)
                .where(approvals.c.status == AWAITING)
                .values(status=SUPERSEDED)
            )
            row = connection.execute(sa.select(approvals).where(*this)).first()
            values = {"status": AWAITING, "previews": json.dumps(dict(previews))}
            if row is None:
                key = {"report": report, "partition": partition, "fingerprint": fingerprint}
                connection.execute(approvals.insert().values(**key, **values, requested_at=_now()))
            elif row.status != APPROVED:
                connection.execute(approvals.update().where(*this).values(**values))
            return dict(connection.execute(sa.select(approvals).where(*this)).one()._mapping)

    def approve(
        self, report: str, partition: str, approver: str, comment: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Approve the window's version awaiting approval: (row, True). When none awaits
        but one was approved before: (that row, False), unchanged. Neither: ApprovalError.
        The conditional update is atomic, so two approvals at once cannot both be first."""
        window = [approvals.c.report == report, approvals.c.partition == partition]
        with self.engine.begin() as connection:
            first = connection.execute(
                approvals.update()
                .where(*window, approvals.c.status == AWAITING)
                .values(status=APPROVED, approver=approver, comment=comment, approved_at=_now())
            ).rowcount
            row = connection.execute(
                sa.select(approvals)
                .where(*window, approvals.c.status == APPROVED)
                .order_by(approvals.c.approved_at.desc())
            ).first()
        if row is None:
            raise ApprovalError(f"{report} {partition}: no e-mail awaits approval")
        return dict(row._mapping), first == 1

    def approval_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Approval rows (all, or those with `status`), oldest request first."""
        query = sa.select(approvals).order_by(approvals.c.requested_at, *approvals.primary_key)
        if status is not None:
            query = query.where(approvals.c.status == status)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def _record_failure(self, key: DeliveryKey, reason: str) -> None:
        keep_sent = sa.case((deliveries.c.status == "sent", "sent"), else_="failed")
        with self.engine.begin() as connection:
            self._upsert(
                connection,
                key,
                {"status": "failed", "attempts": 1, "error": reason[:2000]},
                {
                    "status": keep_sent,
                    "attempts": deliveries.c.attempts + 1,
                    "error": reason[:2000],
                },
            )


def _key_columns(key: DeliveryKey) -> dict[str, str]:
    return {
        "report": key.report,
        "partition": key.partition,
        "recipient": key.recipient,
        "fingerprint": key.fingerprint,
    }


def _matches(key: DeliveryKey) -> list[sa.ColumnElement[bool]]:
    return [deliveries.c[name] == value for name, value in _key_columns(key).items()]


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------- senders


@dataclass(frozen=True)
class Message:
    """What to say, whatever the channel: the webhook gets `payload` as JSON."""

    subject: str
    text: str
    payload: dict[str, Any]
    html: str | None = None


class EmailComposer:
    """Builds a message's e-mail for one delivery key; SMTP and the outbox share it."""

    def __init__(self, sender: str = DEFAULT_FROM):
        self.sender = sender

    def build(self, message: Message, key: DeliveryKey) -> EmailMessage:
        email = EmailMessage()
        email["Subject"] = message.subject
        email["From"] = self.sender
        email["To"] = key.recipient
        email["Message-ID"] = key.message_id(self.sender.rpartition("@")[2] or "agent-reports")
        email["X-Agent-Reports-Key"] = f"{key.report}/{key.partition}/{key.fingerprint}"
        email.set_content(message.text)
        if message.html:
            email.add_alternative(message.html, subtype="html")
        return email


class EmailSender(EmailComposer):
    """SMTP delivery, one envelope per recipient so one refusal cannot affect the others."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        security: str = "starttls",
        user: str | None = None,
        password: str | None = None,
        timeout_seconds: float = 30.0,
    ):
        if security not in SECURITY_MODES:
            raise ValueError(f"SMTP security must be one of {SECURITY_MODES}, not {security!r}")
        super().__init__(sender)
        self.host, self.port, self.security = host, port, security
        self.user, self._password, self.timeout = user, password, timeout_seconds

    def __repr__(self) -> str:  # never show the password
        return f"EmailSender({self.host}:{self.port}, {self.security}, from {self.sender})"

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            context = ssl.create_default_context()
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        return smtp

    def send(self, email: EmailMessage, recipient: str) -> None:
        """Send to one recipient; a refusal or SMTP error raises DeliveryError with the code."""
        try:
            with self._connect() as smtp:
                if self.user:
                    smtp.login(self.user, self._password or "")
                smtp.send_message(email, from_addr=self.sender, to_addrs=[recipient])
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = error.recipients.get(recipient, (0, b""))
            raise DeliveryError(
                f"recipient refused: {code} {reply.decode(errors='replace')[:200]}"
            ) from None
        except smtplib.SMTPAuthenticationError as error:
            raise DeliveryError(f"SMTP authentication failed ({error.smtp_code})") from None
        except smtplib.SMTPResponseException as error:
            raise DeliveryError(f"SMTP error {error.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"SMTP {type(error).__name__}: {error}"[:300]) from None


def incomplete_smtp_settings(
    settings: Mapping[str, str | None], recipients_variable: str, recipients: Sequence[str]
) -> str | None:
    """What a half-way e-mail configuration lacks, naming the variables; None when e-mail
    is either configured or not asked for at all. `settings` maps AGENT_REPORTS_SMTP_*
    names to their values (unset: None or empty)."""
    if not settings.get(SMTP_HOST):
        given = [name for name in SMTP_SETTINGS_NEEDING_HOST if settings.get(name)]
        given += [recipients_variable] if recipients else []
        if given:
            verb = "is" if len(given) == 1 else "are"
            return f"{' and '.join(given)} {verb} set but {SMTP_HOST} is not"
    elif settings.get(SMTP_USER) and not settings.get(SMTP_PASSWORD):
        return f"{SMTP_USER} is set but {SMTP_PASSWORD} is not"
    return None


@dataclass(frozen=True)
class OutboxEntry:
    """One e-mail written instead of sent: the message file and its browser preview."""

    recipient: str
    eml: Path
    html: Path


class Outbox(EmailComposer):
    """E-mails that would have gone out, as files: `<folder>/<report>/<partition>/<to>.eml`
    and `.html`. Writing is not delivering: nothing goes to the ledger, and the same
    message gives the same bytes on every re-run (boundaries derive from the key)."""

    def __init__(self, folder: Path, sender: str = DEFAULT_FROM):
        super().__init__(sender)
        self.folder = folder

    def write(self, email: EmailMessage, key: DeliveryKey) -> OutboxEntry:
        for number, part in enumerate(email.walk()):
            if part.is_multipart():
                part.set_boundary(f"=={key.digest[:24]}.{number}==")
        name = "preview" if key.recipient == PREVIEW_RECIPIENT else _file_name(key.recipient)
        base = self.folder / _file_name(key.report) / _file_name(key.partition) / name
        eml, preview = base.with_name(f"{name}.eml"), base.with_name(f"{name}.html")
        write_atomic(eml, email.as_bytes(policy=policy.SMTP))
        write_atomic(preview, html_preview(email).encode())
        return OutboxEntry(key.recipient, eml, preview)


def _file_name(text: str) -> str:
    """`text` as one safe path segment (no separators, no dot segments)."""
    return re.sub(r"[^A-Za-z0-9@._+:-]", "_", text).lstrip(".") or "_"


def html_preview(email: EmailMessage) -> str:
    """The e-mail's HTML body as a page a browser opens on its own: inline `cid:` images
    become data URIs; a text-only e-mail is shown preformatted (escaped)."""
    body = email.get_body(preferencelist=("html", "plain"))
    if body is None:
        return "<!doctype html><meta charset='utf-8'><p>(empty e-mail)</p>"
    content = body.get_content()
    if body.get_content_type() != "text/html":
        return f"<!doctype html><meta charset='utf-8'><pre>{html_escape.escape(content)}</pre>"
    for part in email.walk():
        cid = (part.get("Content-ID") or "").strip("<>")
        if cid and not part.is_multipart():
            data = base64.b64encode(part.get_payload(decode=True)).decode()
            content = content.replace(f"cid:{cid}", f"data:{part.get_content_type()};base64,{data}")
    return content


class WebhookSender:
    """POSTs the message payload as JSON; any non-2xx answer is a failure."""

    def __init__(self, url: str, token: str | None = None, timeout_seconds: float = 15.0):
        self._url, self._token, self.timeout = url, token, timeout_seconds

    def __repr__(self) -> str:  # webhook URLs often embed a secret
        return "WebhookSender(<url hidden>)"

    @property
    def recipient(self) -> str:
        """The ledger's name for this endpoint: a hash, since the URL may hold a secret."""
        return "webhook:" + hashlib.sha256(self._url.encode()).hexdigest()[:16]

    def send(self, message: Message, key: DeliveryKey) -> None:
        body = json.dumps(
            {**message.payload, "subject": message.subject, "idempotency_key": key.digest},
            sort_keys=True,
        ).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key.digest}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise DeliveryError(f"webhook answered HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DeliveryError(f"webhook unreachable ({type(reason).__name__})") from None


class Notifier:
    """Sends a message to every configured recipient once per (report, partition, fingerprint)."""

    def __init__(
        self,
        ledger: DeliveryLedger,
        email: EmailSender | None = None,
        webhook: WebhookSender | None = None,
    ):
        self.ledger, self.email, self.webhook = ledger, email, webhook

    def notify(
        self,
        report: str,
        partition: str,
        fingerprint: str,
        message: Message,
        email_to: list[str],
        resend: bool = False,
    ) -> list[DeliveryOutcome]:
        """One ledger entry and one attempt per recipient; failures are returned, not raised."""
        outcomes = []
        if email_to and self.email is None:
            raise DeliveryError(f"email recipients are set but {SMTP_HOST} is not")
        for recipient in email_to:
            key = DeliveryKey(report, partition, recipient, fingerprint)
            email = self.email.build(message, key)
            outcomes.append(
                self.ledger.deliver_once(
                    key, lambda e=email, r=recipient: self.email.send(e, r), resend
                )
            )
        if self.webhook is not None:
            key = DeliveryKey(report, partition, self.webhook.recipient, fingerprint)
            outcomes.append(
                self.ledger.deliver_once(key, lambda: self.webhook.send(message, key), resend)
            )
        for outcome in outcomes:
            log.info(
                "delivery %s: %s %s", outcome.key.recipient, outcome.status, outcome.reason or ""
            )
        return outcomes
