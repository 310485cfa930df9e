"""Policy: departments by sender, internal recipients pass, external ones convert."""

from gateway.config import build_config
from gateway.model import (
    Action, Attachment, Classification, Envelope, ZipReport, ZipVerdict,
)
from gateway.pipeline.policy import decide, department_for, is_internal, sender_matches

CONFIG = build_config(
    {
        "gateway": {"internal_domains": ["city.example.lg.jp", "*.city.example.lg.jp"]},
        "departments": [
            {"name": "somu", "senders": ["somu@city.example.lg.jp"], "policy": {"locale": "en"}},
            {"name": "kikaku", "senders": ["kikaku*@city.example.lg.jp", "branch.example.jp"],
             "policy": {"convert": "all-attachments"}},
            {"name": "off", "senders": ["@off.example.jp"], "policy": {"convert": "none"}},
        ],
    },
    environ={},
)


def attachment(verdict: ZipVerdict, path=(1,)) -> Attachment:
    return Attachment(path, "a.zip", "application/zip", b"PK", ZipReport(verdict))


def test_sender_matchers():
    assert sender_matches("somu@city.example.lg.jp", "SOMU@City.Example.LG.JP")
    assert sender_matches("kikaku*@city.example.lg.jp", "kikaku2@city.example.lg.jp")
    assert sender_matches("branch.example.jp", "x@branch.example.jp")
    assert sender_matches("@off.example.jp", "y@off.example.jp")
    assert not sender_matches("branch.example.jp", "x@sub.branch.example.jp")
    assert sender_matches("*.example.jp", "x@sub.example.jp")


def test_first_matching_department_wins_else_default():
    assert department_for(CONFIG, "somu@city.example.lg.jp")[0] == "somu"
    assert department_for(CONFIG, "kikaku@city.example.lg.jp")[0] == "kikaku"
    name, policy = department_for(CONFIG, "nobody@city.example.lg.jp")
    assert name == "default" and policy == CONFIG.policy


def test_internal_domains_and_subdomains():
    assert is_internal(CONFIG, "a@city.example.lg.jp")
    assert is_internal(CONFIG, "a@ward.city.example.lg.jp")
    assert not is_internal(CONFIG, "a@partner.example.com")
    assert not is_internal(CONFIG, "a@evilcity.example.lg.jp")


def test_mixed_recipients_internal_pass_external_convert():
    envelope = Envelope("somu@city.example.lg.jp", ("a@partner.example.com", "b@city.example.lg.jp"))
    decision = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    actions = {r.address: r.action for r in decision.recipients}
    assert actions == {"a@partner.example.com": Action.CONVERT, "b@city.example.lg.jp": Action.PASS}
    assert decision.converting and decision.department == "somu"


def test_plain_zip_passes_but_corrupt_zip_is_converted():
    envelope = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    plain = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.PLAIN_ZIP),)))
    assert not plain.converting and plain.reason == "pass"
    corrupt = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.CORRUPT_ZIP),)))
    assert corrupt.converting


def test_all_attachments_and_none_modes():
    pdf = attachment(ZipVerdict.NOT_ZIP)
    all_mode = decide(CONFIG, Envelope("kikaku@city.example.lg.jp", ("a@p.example.com",)),
                      Classification((pdf,)))
    assert all_mode.converting
    none_mode = decide(CONFIG, Envelope("u@off.example.jp", ("a@p.example.com",)),
                       Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    assert not none_mode.converting


def test_signed_mail_passes_unless_policy_converts_it():
    envelope = Envelope("x@city.example.lg.jp", ("a@partner.example.com",))
    signed = Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),), signed_or_encrypted=True)
    assert decide(CONFIG, envelope, signed).reason == "signed"
    converting = build_config({"policy": {"convert_signed": True}}, environ={})
    assert decide(converting, envelope, signed).converting


def test_only_internal_recipients_means_no_conversion():
    envelope = Envelope("x@city.example.lg.jp", ("b@city.example.lg.jp",))
    decision = decide(CONFIG, envelope, Classification((attachment(ZipVerdict.ENCRYPTED_ZIP),)))
    assert decision.reason == "internal" and not decision.converting
