"""Decide, per recipient, what happens to a message: pass it untouched or convert it.

Only decides (as Mailman's rules do); it changes nothing. Input: the configuration, the
envelope and the classification; output: a Decision.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.config import Config, Policy
from gateway.model import (
    Action,
    Attachment,
    Classification,
    Decision,
    Envelope,
    RecipientDecision,
    ZipVerdict,
)

DEFAULT_DEPARTMENT = "default"

# A ZIP we cannot read is kept from travelling like an encrypted one: it may well be one.
_BLOCKED_VERDICTS = (ZipVerdict.ENCRYPTED_ZIP, ZipVerdict.CORRUPT_ZIP)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def sender_matches(matcher: str, address: str) -> bool:
    """`user@dom` (exact or with * wildcards), `dom` / `@dom` (whole domain), `*.dom` (subdomains)."""
    address = address.strip().lower()
    matcher = matcher.strip().lower()
    if "@" in matcher and not matcher.startswith("@"):
        return fnmatchcase(address, matcher)
    return fnmatchcase(domain_of(address), matcher.lstrip("@"))


def is_internal(config: Config, address: str) -> bool:
    domain = domain_of(address)
    for internal in config.gateway.internal_domains:
        if internal.startswith("*.") or internal.startswith("."):
            suffix = internal.lstrip("*")
            if domain.endswith(suffix) or domain == suffix.lstrip("."):
                return True
        elif domain == internal:
            return True
    return False


def department_policy(config: Config, name: str) -> Policy:
    """The policy of a department by name (as a transfer records it); the default if gone."""
    for department in config.departments:
        if department.name == name:
            return department.policy
    return config.policy


def department_for(config: Config, sender: str) -> tuple[str, Policy]:
    """First matching department wins, else the default policy."""
    for department in config.departments:
        if any(sender_matches(m, sender) for m in department.senders):
            return department.name, department.policy
    return DEFAULT_DEPARTMENT, config.policy


def attachments_to_convert(policy: Policy, classification: Classification) -> tuple[Attachment, ...]:
    if policy.convert == "none":
        return ()
    if policy.convert == "all-attachments":
        return classification.attachments
    return tuple(a for a in classification.attachments if _needs_password(a))


def _needs_password(attachment: Attachment) -> bool:
    """An encrypted (or unreadable) ZIP, or an encrypted 7z, Office document or PDF."""
    if attachment.zip.verdict in _BLOCKED_VERDICTS:
        return True
    return attachment.container is not None and attachment.container.encrypted


def decide(config: Config, envelope: Envelope, classification: Classification) -> Decision:
    department, policy = department_for(config, envelope.mail_from)
    internal = {r: is_internal(config, r) for r in envelope.rcpt_tos}

    def all_pass(reason: str) -> Decision:
        recipients = tuple(RecipientDecision(r, internal[r], Action.PASS) for r in envelope.rcpt_tos)
        return Decision(department, policy, recipients, (), reason)

    if classification.signed_or_encrypted and not policy.convert_signed:
        return all_pass("signed")
    to_convert = attachments_to_convert(policy, classification)
    if not to_convert:
        return all_pass("pass")
    if all(internal.values()):
        return all_pass("internal")
    recipients = tuple(
        RecipientDecision(r, internal[r], Action.PASS if internal[r] else Action.CONVERT)
        for r in envelope.rcpt_tos
    )
    return Decision(department, policy, recipients, to_convert, "convert")
