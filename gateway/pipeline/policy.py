"""Decide, per recipient, what happens to a message: pass it untouched or convert it.

Only decides (as Mailman's rules do); it changes nothing. Input: the configuration, the
envelope and the classification; output: a Decision.
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase

from gateway.addresses import domain_of, is_plain_mailbox
from gateway.config import Config, Policy
from gateway.errors import PermFail
from gateway.model import (
    Action,
    Attachment,
    Classification,
    Decision,
    Envelope,
    Finding,
    RecipientDecision,
    Refusal,
    ZipVerdict,
)
from gateway.pipeline.transaction import Transaction
from gateway.replies import Reply

DEFAULT_DEPARTMENT = "default"

# A ZIP we cannot read is kept from travelling like an encrypted one: it may well be one.
_BLOCKED_VERDICTS = (ZipVerdict.ENCRYPTED_ZIP, ZipVerdict.CORRUPT_ZIP)


def sender_matches(matcher: str, address: str) -> bool:
    """`user@dom` (exact or with * wildcards), `dom` / `@dom` (whole domain), `*.dom` (subdomains)."""
    address = address.strip().lower()
    matcher = matcher.strip().lower()
    if "@" in matcher and not matcher.startswith("@"):
        return fnmatchcase(address, matcher)
    return fnmatchcase(domain_of(address), matcher.lstrip("@"))


def is_internal(config: Config, address: str) -> bool:
    """Only a plain mailbox in an internal domain: an address the next hop could route on
    elsewhere (`user%other@dom`, `"user@other"@dom`, `other!user@dom`, `user@[192.0.2.1]`)
    is external, whatever its domain says."""
    if not is_plain_mailbox(address):
        return False
    domain = domain_of(address)
    for internal in config.gateway.internal_domains:
        if internal.startswith("*.") or internal.startswith("."):
            suffix = internal.lstrip("*")
            if domain.endswith(suffix) or domain == suffix.lstrip("."):
                return True
        elif domain == internal:
            return True
    return False


def department_for(config: Config, sender: str) -> tuple[str, Policy]:
    """First matching department wins, else the default policy. The null sender (bounces,
    reports) belongs to no one: the default policy, whatever a "*" matcher says."""
    if not sender:
        return DEFAULT_DEPARTMENT, config.policy
    for department in config.departments:
        if any(sender_matches(m, sender) for m in department.senders):
            return department.name, department.policy
    return DEFAULT_DEPARTMENT, config.policy


def needs_inspection(config: Config, envelope: Envelope) -> bool:
    """Whether the message's files must be looked into: some copy leaves the organisation
    under a policy that converts anything."""
    _, policy = department_for(config, envelope.mail_from)
    if policy.convert == "none":
        return False
    return not all(is_internal(config, r) for r in envelope.rcpt_tos)


def attachments_to_convert(policy: Policy, classification: Classification) -> tuple[Attachment, ...]:
    if policy.convert == "none":
        return ()
    if policy.convert == "all-attachments":
        return classification.attachments
    return tuple(a for a in classification.attachments if needs_password(a))


def needs_password(attachment: Attachment) -> bool:
    """An encrypted (or unreadable) ZIP, an encrypted 7z, RAR, Office document, PDF or OpenPGP
    message anywhere in it, or a container that cannot be opened to find out."""
    if attachment.zip.verdict in _BLOCKED_VERDICTS:
        return True
    if attachment.container is not None and attachment.container.encrypted:
        return True
    content = attachment.content
    return content is not None and content.finding in (Finding.ENCRYPTED, Finding.UNINSPECTABLE)


# Refusals, in the words the sender's bounce will carry (ASCII).
SIGNED_ARCHIVE = Refusal(
    "5.7.0", "Encrypted archive inside a signed message: converting it would break the "
    "signature; send the file unencrypted or the message unsigned")
ENCRYPTED_MAIL = Refusal(
    "5.7.0", "Encrypted message (S/MIME or OpenPGP): its contents cannot be checked for "
    "password-protected files")


def decide(config: Config, envelope: Envelope, classification: Classification) -> Decision:
    department, policy = department_for(config, envelope.mail_from)
    internal = {r: is_internal(config, r) for r in envelope.rcpt_tos}

    def all_pass(reason: str) -> Decision:
        recipients = tuple(RecipientDecision(r, internal[r], Action.PASS) for r in envelope.rcpt_tos)
        return Decision(department, policy, recipients, (), reason)

    def refuse(refusal: Refusal) -> Decision:
        return replace(all_pass("refused"), refusal=refusal)

    to_convert = attachments_to_convert(policy, classification)
    if policy.convert == "none":
        return all_pass("pass")
    if all(internal.values()):
        return all_pass("internal" if to_convert else "pass")
    # From here on some recipient is outside: what cannot be inspected does not go out.
    if classification.uninspectable:
        return refuse(Refusal("5.6.0", f"Message cannot be inspected: "
                                       f"{_ascii(classification.uninspectable[0])}"))
    if any(a.inside_signed for a in to_convert) and not policy.convert_signed:
        return refuse(SIGNED_ARCHIVE)
    if classification.opaque and policy.encrypted_mail == "refuse":
        return refuse(ENCRYPTED_MAIL)
    if not to_convert:
        return all_pass("encrypted" if classification.opaque else
                        "signed" if classification.signed else "pass")
    recipients = tuple(
        RecipientDecision(r, internal[r], Action.PASS if internal[r] else Action.CONVERT)
        for r in envelope.rcpt_tos
    )
    return Decision(department, policy, recipients, to_convert, "convert")


class Decide:
    """The decide stage: the decision, the log line's counts, and a refusal raised."""

    name = "decide"

    def __init__(self, config: Config):
        self._config = config

    async def process(self, tx: Transaction) -> None:
        classification = tx.classification
        tx.decision = decision = decide(self._config, tx.envelope, classification)
        outcome = tx.outcome
        outcome.department, outcome.decision = decision.department, decision.reason
        outcome.internal = sum(1 for r in decision.recipients if r.internal)
        outcome.external = len(decision.recipients) - outcome.internal
        outcome.notes.extend(classification.notes)
        if decision.refusal is not None:
            reply = Reply(554, decision.refusal.enhanced, decision.refusal.text)
            raise PermFail(reply, "refused", *(classification.uninspectable or classification.opaque))
        outcome.notes.extend(
            f"corrupt-zip held back: {a.zip.reason}"
            for a in decision.to_convert if a.zip.verdict is ZipVerdict.CORRUPT_ZIP
        )


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")
