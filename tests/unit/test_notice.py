"""The download notice: values formatted for people, both locales, hostile file names."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
import pytest

from gateway.config import BUNDLED_TEMPLATES
from gateway.pipeline.notice import Notice, NoticeFile, make_template_env, render_notice
from gateway.presentation import display_name, format_expiry, human_size

TEMPLATES = BUNDLED_TEMPLATES  # gateway/templates/, shipped inside the package
TOKYO = ZoneInfo("Asia/Tokyo")
URL = "https://files.city.example.lg.jp/d/Zk3vQ9xTt2"
EXPIRES = datetime(2026, 12, 3, 17, 0, tzinfo=TOKYO)
HOSTILE = "<script>\"&'.zip"


def make_notice(locale: str = "ja", password: str = "none", names: tuple[str, ...] = ()) -> Notice:
    files = tuple(NoticeFile(name, 6878) for name in names or ("見積書一式_2026年11月.zip",))
    return Notice(locale, files, URL, EXPIRES, password)


@pytest.fixture(scope="module")
def env() -> jinja2.Environment:
    return make_template_env(TEMPLATES)


@pytest.mark.parametrize(
    ("size", "locale", "shown"),
    [
        (0, "en", "0 B"),
        (512, "en", "512 B"),
        (512, "ja", "512 バイト"),
        (6878, "en", "6.7 KB"),
        (1234567, "en", "1.2 MB"),
        (1024 * 1024 - 1, "en", "1.0 MB"),  # rounds up into the next unit, not "1024.0 KB"
        (5 * 1024**3, "ja", "5.0 GB"),
    ],
)
def test_human_size_reads_like_a_file_manager(size: int, locale: str, shown: str) -> None:
    assert human_size(size, locale) == shown


def test_expiry_in_japanese_has_weekday_and_zone_abbreviation() -> None:
    assert format_expiry(EXPIRES, "ja") == "2026年12月3日(木) 17:00 JST"


def test_expiry_in_english_has_weekday_and_zone_abbreviation() -> None:
    assert format_expiry(EXPIRES, "en") == "Thu, 3 Dec 2026 17:00 JST"


@pytest.mark.parametrize(
    ("zone", "label"),
    [
        (timezone(timedelta(hours=9)), "UTC+09:00"),
        (timezone(timedelta(hours=-5, minutes=-30)), "UTC-05:30"),
        (ZoneInfo("Etc/GMT-9"), "UTC+09:00"),  # its tzname is "+09", not a name
        (timezone.utc, "UTC"),
    ],
)
def test_expiry_falls_back_to_utc_offset_when_the_zone_has_no_abbreviation(zone, label) -> None:
    moment = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc).astimezone(zone)
    assert format_expiry(moment, "en").endswith(f" {label}")


@pytest.mark.parametrize(
    "change",
    [
        {"locale": "fr"},
        {"password": "Qm7#vK2p9L"},  # a password itself is never accepted as the mode
        {"expires_at": datetime(2026, 12, 3, 17, 0)},
        {"url": "javascript:alert(1)"},
        {"url": 'https://x.example/"><script>'},
        {"url": "https://x.example/a b"},
    ],
)
def test_notice_rejects_values_it_cannot_show_safely(change: dict) -> None:
    values = {"locale": "ja", "files": (), "url": URL, "expires_at": EXPIRES, "password": "none"}
    with pytest.raises(ValueError):
        Notice(**{**values, **change})


def test_japanese_text_lists_file_size_link_and_expiry(env) -> None:
    text, _ = render_notice(env, make_notice("ja"))
    assert "メールゲートウェイ" in text and "ダウンロードリンク" in text
    assert "・見積書一式_2026年11月.zip（6.7 KB）" in text
    assert URL in text.splitlines()
    assert "2026年12月3日(木) 17:00 JST" in text
    assert "パスワード" not in text  # password "none": no password line at all


def test_english_text_lists_file_size_link_and_expiry(env) -> None:
    text, _ = render_notice(env, make_notice("en", names=("a.zip", "b.zip")))
    assert "mail gateway" in text and "attachments to this message were converted" in text
    assert "- a.zip (6.7 KB)" in text and "- b.zip (6.7 KB)" in text
    assert f"Download: {URL}" in text
    assert "Available until: Thu, 3 Dec 2026 17:00 JST" in text
    assert "assword" not in text


def test_english_text_speaks_of_one_attachment_in_the_singular(env) -> None:
    text, html = render_notice(env, make_notice("en", names=("a.zip",)))
    assert "The attachment to this message was converted" in text
    assert "The attachment to this message was converted" in html


@pytest.mark.parametrize(
    ("password", "ja_line", "en_line"),
    [
        ("recipient-email", "パスワードは別のメールでお送りします。", "sent to you in a separate email"),
        ("webhook", "パスワードは別途お知らせします。", "will be sent to you separately"),
        ("sender-email", "パスワードは送信者から別途お知らせします。", "sender will tell you the password"),
    ],
)
def test_password_line_says_how_the_password_arrives(env, password, ja_line, en_line) -> None:
    ja_text, ja_html = render_notice(env, make_notice("ja", password))
    en_text, en_html = render_notice(env, make_notice("en", password))
    assert ja_line in ja_text and ja_line in ja_html
    assert en_line in en_text and en_line in en_html


def test_html_escapes_a_hostile_file_name(env) -> None:
    for locale in ("ja", "en"):
        _, html = render_notice(env, make_notice(locale, names=(HOSTILE,)))
        assert "&lt;script&gt;&#34;&amp;&#39;.zip" in html
        assert "<script" not in html


def test_text_keeps_a_hostile_file_name_readable_and_on_one_line(env) -> None:
    name = "請求書\x1b$B\t\x00\u202egpj.zip"  # ESC would switch ISO-2022-JP modes; RLO reorders
    text, html = render_notice(env, make_notice("ja", names=(name, HOSTILE)))
    assert "・請求書$Bgpj.zip（6.7 KB）" in text
    assert f"・{HOSTILE}（6.7 KB）" in text
    assert not re.search("[\x00-\x08\x0b-\x1f\u202e]", text + html)


def test_overlong_file_name_is_shortened(env) -> None:
    assert len(display_name("あ" * 5000)) == 200
    text, _ = render_notice(env, make_notice("ja", names=("あ" * 5000,)))
    assert max(len(line.encode("utf-8")) for line in text.splitlines()) < 998


def test_html_block_is_self_contained(env) -> None:
    for locale in ("ja", "en"):
        _, html = render_notice(env, make_notice(locale, "recipient-email"))
        assert html.lstrip().startswith("<table") and html.rstrip().endswith("</table>")
        external = r"<(script|style|link|img|iframe|object)\b|src=|url\(|@import"
        assert not re.search(external, html, re.IGNORECASE)
        assert re.findall(r"https?://[^\s\"<]+", html) == [URL, URL]  # the href and its text only
        assert html.count("<table") == html.count("</table>") == 2
        assert f'<a href="{URL}"' in html


def test_japanese_notice_fits_iso_2022_jp_so_jis_mail_stays_jis(env) -> None:
    for password in ("none", "recipient-email", "sender-email", "webhook"):
        text, html = render_notice(env, make_notice("ja", password))
        text.encode("iso2022_jp")  # raises if anything lies outside JIS X 0208
        html.encode("iso2022_jp")


def test_rendered_notice_uses_lf_and_has_no_trailing_spaces(env, tmp_path: Path) -> None:
    # The bundled templates have neither CRs nor trailing blanks, so rendering them proves
    # nothing about the cleaning: an operator's templates (templates_dir), saved by a Windows
    # editor with CRLF and trailing blanks, do.
    (tmp_path / "mail").mkdir()
    for template in (TEMPLATES / "mail").glob("notice.*"):
        lines = template.read_text(encoding="utf-8").split("\n")
        # (not after a block tag: jinja's trim_blocks only takes a newline right after "%}")
        untidy = [line if line.endswith("%}") else line + " \t " for line in lines]
        (tmp_path / "mail" / template.name).write_bytes(
            ("\r\n".join(untidy) + "\r\n\r\n").encode("utf-8"))
    for locale in ("ja", "en"):
        notice = make_notice(locale, "webhook")
        untidy = render_notice(make_template_env(tmp_path), notice)
        for rendered, bundled in zip(untidy, render_notice(env, notice)):
            assert "\r" not in rendered and rendered.endswith("\n") and not rendered.endswith("\n\n")
            assert all(line == line.rstrip() for line in rendered.splitlines())
            assert rendered == bundled  # only the blanks and line ends went


def test_environment_refuses_undefined_values_and_escapes_only_html(tmp_path: Path) -> None:
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "strict.txt").write_text("{{ missing }}")
    (tmp_path / "mail" / "plain.txt").write_text("{{ value }}")
    (tmp_path / "mail" / "page.html").write_text("{{ value }}")
    env = make_template_env(tmp_path)
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("mail/strict.txt").render()
    assert env.get_template("mail/plain.txt").render(value="<b>") == "<b>"
    assert env.get_template("mail/page.html").render(value="<b>") == "&lt;b&gt;"


DOUBLE_ZIP_LINES = {
    "ja": "※ZIPファイルの中にさらにZIPファイルが含まれています（二重ZIP）。",
    "en": "Note: a ZIP file listed above contains another ZIP file (double ZIP).",
}


@pytest.mark.parametrize("locale", ["ja", "en"])
def test_double_zip_line_appears_only_when_a_zip_holds_a_zip(env, locale: str) -> None:
    line = DOUBLE_ZIP_LINES[locale]
    text, html = render_notice(env, replace(make_notice(locale), double_zip=True))
    assert line in text.splitlines()
    assert f"{line}<br>" in html
    plain_text, plain_html = render_notice(env, make_notice(locale))
    assert "ZIP）" not in plain_text + plain_html and "double ZIP" not in plain_text + plain_html


def test_double_zip_line_sits_under_the_file_list(env) -> None:
    text, _ = render_notice(env, replace(make_notice("ja"), double_zip=True))
    lines = text.splitlines()
    assert lines[lines.index(DOUBLE_ZIP_LINES["ja"]) - 1].startswith("・見積書一式")


def test_japanese_double_zip_notice_still_fits_iso_2022_jp(env) -> None:
    text, html = render_notice(env, replace(make_notice("ja", "recipient-email"), double_zip=True))
    text.encode("iso2022_jp")
    html.encode("iso2022_jp")
