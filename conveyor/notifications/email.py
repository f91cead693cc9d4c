"""The email channel: multipart text + HTML messages over SMTP, or into an outbox folder."""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import tempfile
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, parseaddr
from pathlib import Path

from conveyor.errors import BouncedAddressError, ConfigurationError, PermanentDeliveryError
from conveyor.notifications.channels import Outgoing, Sent
from conveyor.settings import Settings

logger = logging.getLogger(__name__)

#: Long header values (the unsubscribe link) folded at whitespace only, never turned into
#: RFC 2047 encoded words, which mail clients do not read as a URL; 998 is RFC 5322's limit.
POLICY = default_policy.clone(max_line_length=998)


def build_message(message: Outgoing, sender: str) -> EmailMessage:
    """The MIME message of `message`: text and HTML alternatives, its Message-ID derived from
    the delivery id (so a message sent twice is recognisably the same), its extra headers."""
    if message.text is None and message.html is None:
        raise PermanentDeliveryError("the email has neither a text nor an HTML body")
    email = EmailMessage(policy=POLICY)
    email["From"] = sender
    try:
        email["To"] = message.address
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise PermanentDeliveryError(f"bad email address: {exc}") from None
    email["Subject"] = message.subject or ""
    email["Date"] = formatdate(usegmt=True)
    email["Message-ID"] = message_id(message, sender)
    for name, value in message.headers.items():
        email[name] = value
    if message.text is not None:
        email.set_content(message.text)
        if message.html is not None:
            email.add_alternative(message.html, subtype="html")
    else:
        email.set_content(message.html or "", subtype="html")
    return email


def message_id(message: Outgoing, sender: str) -> str:
    domain = parseaddr(sender)[1].rpartition("@")[2] or "conveyor.invalid"
    return f"<{message.delivery_id}@{domain}>"


def check_address(address: str) -> str:
    """`address` if it is one plain email address (`user@domain`); ValueError otherwise."""
    try:
        parsed = Address(addr_spec=address)
    except (ValueError, IndexError, HeaderParseError) as exc:  # "@b.c" is a HeaderParseError
        raise ValueError(f"not an email address: {exc}") from None
    if not parsed.username or "." not in parsed.domain or parsed.addr_spec != address:
        raise ValueError("not a plain email address (user@example.com)")
    return address


class SmtpChannel:
    """Sends email through the SMTP server of the settings (STARTTLS, TLS and AUTH as set).

    One connection per message: simple, and nothing held open between jobs. A 5xx answer
    for the recipient or the message is permanent; 4xx answers and lost connections are
    transient (retried)."""

    name = "email"
    provider = "smtp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, message: Outgoing) -> Sent:
        s = self.settings
        email = build_message(message, s.mail_from)
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if s.smtp_security == "tls":
            client = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
        with client:
            if s.smtp_security == "starttls":
                client.starttls(context=context)
            if s.smtp_username:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                client.login(s.smtp_username, password)
            try:
                client.send_message(email)
            except smtplib.SMTPRecipientsRefused as exc:
                code, answer = _first(exc)
                if 500 <= code < 600:  # a hard bounce: this address will not take mail
                    raise BouncedAddressError(
                        f"the SMTP server refused the recipient: {code} {answer}"
                    ) from None
                raise  # a 4xx: greylisting, a full mailbox; a later attempt may pass
            except smtplib.SMTPResponseException as exc:
                if 500 <= exc.smtp_code < 600:
                    answer = f"{exc.smtp_code} {_text(exc.smtp_error)}"
                    raise PermanentDeliveryError(
                        f"the SMTP server refused the message: {answer}"
                    ) from None
                raise
        return Sent(self.provider, email["Message-ID"])


class OutboxChannel:
    """Writes each email as `<delivery id>.eml` in a folder, for the embedded mode: open them
    with any mail reader. Writing the same delivery again replaces its file (no duplicate)."""

    name = "email"
    provider = "outbox"

    def __init__(self, folder: Path, sender: str) -> None:
        self.folder = folder
        self.sender = sender

    def send(self, message: Outgoing) -> Sent:
        email = build_message(message, self.sender)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.folder / f"{message.delivery_id}.eml"
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(email.as_bytes())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info("email of delivery %s written to %s", message.delivery_id, target)
        return Sent(self.provider, email["Message-ID"])


def email_channel(settings: Settings) -> SmtpChannel | OutboxChannel:
    """The email channel the settings ask for."""
    if settings.email_transport == "outbox":
        return OutboxChannel(outbox_dir(settings), settings.mail_from)
    if settings.smtp_password is not None and not settings.smtp_username:
        raise ConfigurationError("CONVEYOR_SMTP_PASSWORD is set without CONVEYOR_SMTP_USERNAME")
    return SmtpChannel(settings)


def outbox_dir(settings: Settings) -> Path:
    return settings.outbox_dir or settings.data_dir / "outbox"


def _first(exc: smtplib.SMTPRecipientsRefused) -> tuple[int, str]:
    for code, text in exc.recipients.values():
        return code, _text(text)
    return 550, "no reason given"


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
