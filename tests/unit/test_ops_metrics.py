"""GatewayMetrics: every metric in the exposition text, label values bounded to fixed sets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.metrics import DECISIONS, GatewayMetrics, reply_class


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _content_type = metrics.render()
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_metric_appears_with_its_value_after_calls() -> None:
    metrics = GatewayMetrics()
    metrics.message_relayed("convert", 250, 0.2, bytes_stored=1234, links_created=2)
    metrics.message_relayed("pass", 451, 0.003)
    metrics.download()
    metrics.refusal("expired")
    values = samples(metrics)
    assert values[("ppap_messages_total", (("decision", "convert"),))] == 1
    assert values[("ppap_messages_total", (("decision", "pass"),))] == 1
    assert values[("ppap_bytes_stored_total", ())] == 1234
    assert values[("ppap_links_created_total", ())] == 2
    assert values[("ppap_downloads_total", ())] == 1
    assert values[("ppap_download_refusals_total", (("reason", "expired"),))] == 1
    assert values[("ppap_smtp_replies_total", (("class", "2xx"),))] == 1
    assert values[("ppap_smtp_replies_total", (("class", "4xx"),))] == 1
    assert values[("ppap_relay_seconds_count", ())] == 2
    assert values[("ppap_relay_seconds_bucket", (("le", "0.005"),))] == 1
    assert values[("ppap_relay_seconds_bucket", (("le", "60.0"),))] == 2


def test_series_exist_at_zero_before_any_event() -> None:
    values = samples(GatewayMetrics())
    assert values[("ppap_messages_total", (("decision", "duplicate"),))] == 0
    assert values[("ppap_smtp_replies_total", (("class", "5xx"),))] == 0
    assert values[("ppap_downloads_total", ())] == 0


def test_unknown_label_values_count_as_other_and_create_no_series() -> None:
    metrics = GatewayMetrics()
    before = set(samples(metrics))
    for n in range(200):
        metrics.message_relayed(f"evil-{n}\n# HELP", 600 + n, 0.1)
        metrics.refusal(f"<script>{n}")
    values = samples(metrics)
    assert set(values) == before
    assert values[("ppap_messages_total", (("decision", "other"),))] == 200
    assert values[("ppap_download_refusals_total", (("reason", "other"),))] == 200
    assert values[("ppap_smtp_replies_total", (("class", "other"),))] == 200
    assert b"evil" not in metrics.render()[0] and b"script" not in metrics.render()[0]


def test_refusal_reasons_can_be_chosen_by_the_portal() -> None:
    metrics = GatewayMetrics(refusal_reasons=("too_soon",))
    metrics.refusal("too_soon")
    metrics.refusal("expired")  # not in this set
    values = samples(metrics)
    assert values[("ppap_download_refusals_total", (("reason", "too_soon"),))] == 1
    assert values[("ppap_download_refusals_total", (("reason", "other"),))] == 1


def test_negative_amounts_are_ignored_instead_of_raising() -> None:
    metrics = GatewayMetrics()
    metrics.message_relayed("error", 451, -1.0, bytes_stored=-5, links_created=-1)
    values = samples(metrics)
    assert values[("ppap_bytes_stored_total", ())] == 0
    assert values[("ppap_relay_seconds_sum", ())] == 0


def test_reply_classes() -> None:
    assert [reply_class(c) for c in (250, 221, 451, 452, 554, 550, 354, 0, 999)] == [
        "2xx", "2xx", "4xx", "4xx", "5xx", "5xx", "other", "other", "other",
    ]


def test_instances_have_separate_registries() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.download()
    assert samples(first)[("ppap_downloads_total", ())] == 1
    assert samples(second)[("ppap_downloads_total", ())] == 0


def test_render_gives_prometheus_text_content_type() -> None:
    body, content_type = GatewayMetrics().render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE ppap_relay_seconds histogram" in body
    assert set(DECISIONS) >= {"pass", "convert", "internal", "signed", "duplicate", "error"}
