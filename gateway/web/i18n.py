"""The portal's words in Japanese and English, and which of the two a visitor gets.

Choice: `?lang=` in the URL, else the `lang` cookie, else Accept-Language, else Japanese.
Messages are plain text; the templates escape them (and whatever is filled into them).
"""

from __future__ import annotations

from typing import Mapping

from gateway.presentation import DEFAULT_LOCALE, LOCALES

_MAX_LANGUAGE_RANGES = 32

MESSAGES: dict[str, dict[str, str]] = {
    "ja": {
        "site_name": "ファイル受け渡し",
        "language": "表示言語",
        "footer": "このページは送信元組織のメールゲートウェイ（ppap-gateway）が提供しています。",
        "landing_title": "ファイルのダウンロード",
        "landing_lead": "{sender} さんから、次のファイルが届いています。",
        "from": "差出人",
        "subject": "件名",
        "recipient": "宛先",
        "expires": "有効期限",
        "downloads_left": "残りダウンロード回数",
        "unlimited": "制限なし",
        "times": "{count} 回",
        "files": "ファイル",
        "size": "サイズ",
        "size_value": "{human}（{bytes} バイト）",
        "sha256": "SHA-256",
        "download": "ダウンロード",
        "download_all": "すべてまとめてダウンロード（ZIP）",
        "count_note": "ダウンロードボタンを押すたびに 1 回と数えます。このページを開くだけでは数えません。",
        "hash_note": "受け取ったファイルの SHA-256 が上の値と同じなら、内容は送信されたときのままです。",
        "password_heading": "パスワードの入力",
        "password_lead": "ダウンロードにはパスワードが必要です。パスワードはこのリンクとは別の方法でお知らせしています。",
        "password_label": "パスワード",
        "password_submit": "確認する",
        "password_wrong": "パスワードが違います。あと {left} 回試せます。",
        "password_locked": "パスワードの誤りが続いたため、{until} まで入力を受け付けません。",
        "gone_title": "このリンクは使えなくなりました",
        "gone_expired": "このリンクの有効期限は {when} に切れました。",
        "gone_revoked": "このリンクは差出人により取り消されました。",
        "gone_limit": "このリンクはダウンロード回数の上限に達しました。",
        "gone_blocked": "セキュリティ上の理由により、このファイルの提供を停止しました"
                        "（ウイルスが検出されました）。",
        "gone_ask": "ファイルが必要な場合は、差出人（{sender}）にお問い合わせください。",
        "not_found_title": "ページが見つかりません",
        "not_found_body": "リンクが正しくないか、使える状態にありません。メールに記載されたリンクを、省略せずにそのまま開いてください。",
        "forbidden_title": "操作を受け付けられませんでした",
        "forbidden_csrf": "ページの有効時間が過ぎたか、別のサイトから送信されました。ダウンロードページを開き直してから、もう一度お試しください。",
        "forbidden_password": "先にパスワードを入力してください。",
        "locked_title": "しばらくお待ちください",
        "server_error_title": "エラーが発生しました",
        "server_error_body": "ファイルを取り出せませんでした。時間をおいてもう一度お試しいただくか、差出人にお問い合わせください。",
        "error_title": "リクエストを処理できませんでした",
        "error_body": "このアドレスでは、この操作はできません。",
        "back": "ダウンロードページに戻る",
        "back_manage": "管理ページに戻る",
        "forbidden_verify": "先に、確認コードでご本人確認をしてください。",
        "forbidden_manage": "ページの有効時間が過ぎたか、別のサイトから送信されました。管理ページを開き直してから、もう一度お試しください。",
        "otp_unavailable": "現在、確認コードをお送りできません。時間をおいてもう一度お試しください。",
        "verify_heading": "ご本人確認",
        "verify_lead": "このファイルは {address} 宛てに送られました。ご本人確認のため、このアドレスに確認コード（6 桁）をお送りします。",
        "verify_send": "確認コードを送る",
        "verify_sent": "{address} に確認コードを送りました。{until} まで有効です。",
        "verify_code_label": "確認コード（6 桁）",
        "verify_submit": "確認する",
        "verify_resend": "確認コードを送り直す",
        "verify_locked": "確認コードの送信または入力が上限の回数に達したため、このリンクでは確認コードを使えなくなりました。送信者（{sender}）にはお知らせしました。送信者がロックを解除すると、もう一度確認コードを送れるようになります。",
        "otp_wrong": "確認コードが違います。あと {left} 回試せます。",
        "otp_locked": "確認コードの誤りが続いたため、このコードは使えなくなりました。新しいコードを送ってください。",
        "otp_expired": "確認コードの有効期限が切れました。新しいコードを送ってください。",
        "otp_none": "先に確認コードを送ってください。",
        "otp_wait": "確認コードは {seconds} 秒後に送り直せます。",
        "otp_client_limit": "確認コードの送信が多すぎます。{until} 以降にもう一度お試しください。",
        "manage_title": "送信したファイルの管理",
        "manage_lead": "このページのアドレスは送信者ご本人にだけお知らせしています。他の方に転送しないでください。",
        "sent_at": "送信日時",
        "max_expiry": "延長できる上限",
        "ended_note": "有効期限が過ぎたため、このファイルの受け渡しは終了しました。",
        "recipients": "宛先ごとの状況",
        "link_state": "リンク",
        "state_active": "有効",
        "state_revoked": "取り消し済み",
        "state_pending": "配送待ち",
        "state_failed": "配送できませんでした",
        "state_expired": "期限切れ",
        "delivered_at": "配送日時",
        "not_delivered": "―",
        "downloads": "ダウンロード",
        "downloads_none": "まだダウンロードされていません",
        "downloads_once": "1 回（{at}）",
        "downloads_many": "{count} 回（初回 {first}、最終 {last}）",
        "password_notice": "パスワードのお知らせ",
        "notice_pending": "送信待ち（{at} に送信予定）",
        "notice_sent": "送信済み（{at}）",
        "notice_gave_up": "送信できませんでした",
        "notice_cancelled": "取り消し済み",
        "revoke_one": "このリンクを取り消す",
        "codes": "確認コード",
        "codes_locked": "ロック中（{at} から、{reason}）",
        "codes_locked_sends": "送信回数が上限に達しました",
        "codes_locked_failures": "誤った入力が上限に達しました",
        "codes_unlock": "確認コードのロックを解除する",
        "revoke_all": "すべてのリンクを取り消す",
        "revoke_note": "取り消したリンクは元に戻せません。",
        "extend_heading": "有効期限の延長",
        "extend_label": "延長する期間",
        "extend_day_one": "1 日（{until} まで）",
        "extend_days": "{days} 日（{until} まで）",
        "extend_max": "上限まで（{until} まで）",
        "extend_submit": "延長する",
        "extend_limit_note": "ポリシーにより、{until} より後には延長できません。",
        "extend_at_max": "有効期限はすでに上限（{until}）です。",
        "extend_refused": "延長できませんでした。新しい期限は現在の期限より後、かつ {until} 以前である必要があります。",
        "done_revoked": "リンクを取り消しました。",
        "done_extended": "有効期限を延長しました。",
        "done_unchanged": "変更はありませんでした。",
        "done_codes_unlocked": "確認コードのロックを解除しました。宛先の方はもう一度確認コードを送れます。",
        "done_unlocked": "ZIP を開きました。受信者はリンクから中身のファイルをそのまま受け取れます（パスワードは不要です）。",
        "done_blocked": "ZIP の中にウイルスが見つかったため、このファイルの受け渡しを止めました。",
        "unlock_heading": "ZIP のパスワードで開く",
        "unlock_lead": "暗号化 ZIP のパスワードをここに入力すると、ゲートウェイが ZIP を開いてウイルス検査を行い、受信者にはパスワードなしで中身のファイルを渡します。パスワードを別のメールで送る必要はありません。",
        "unlock_label": "ZIP のパスワード",
        "unlock_submit": "ZIP を開く",
        "unlock_wrong": "このパスワードでは ZIP を開けませんでした。",
        "unlock_refused": "この ZIP は安全に開けないため、開きませんでした（{reason}）。受信者には暗号化されたままの ZIP が届きます。",
        "unlock_limited": "試行回数が多すぎます。{minutes} 分ほど待ってからもう一度お試しください。",
        "unlock_scan_unavailable": "ウイルス検査が一時的に使えません。しばらくしてからもう一度お試しください。",
        "unlock_busy": "ただいま混み合っています。しばらくしてからもう一度お試しください。",
        "unlock_state_unlocked": "ZIP は {at} に開かれ、受信者には中身のファイルを渡しています。",
        "unlock_state_blocked": "ウイルスが見つかったため受け渡しを止めています（{reason}）。",
        "unlock_state_refused": "ZIP は安全に開けないため、暗号化されたまま渡しています（{reason}）。",
    },
    "en": {
        "site_name": "File delivery",
        "language": "Language",
        "footer": "This page is provided by the sending organisation's mail gateway (ppap-gateway).",
        "landing_title": "Download files",
        "landing_lead": "{sender} has sent you the following files.",
        "from": "From",
        "subject": "Subject",
        "recipient": "For",
        "expires": "Available until",
        "downloads_left": "Downloads left",
        "unlimited": "Unlimited",
        "times": "{count}",
        "files": "Files",
        "size": "Size",
        "size_value": "{human} ({bytes} bytes)",
        "sha256": "SHA-256",
        "download": "Download",
        "download_all": "Download all (ZIP)",
        "count_note": "Each press of a download button counts as one download. Opening this page does not.",
        "hash_note": "If the SHA-256 of the file you receive matches the value above, it is exactly what was sent.",
        "password_heading": "Enter the password",
        "password_lead": "A password is needed to download these files. It has been sent to you separately from this link.",
        "password_label": "Password",
        "password_submit": "Continue",
        "password_wrong": "Wrong password. {left} attempts left.",
        "password_locked": "Too many wrong passwords: please try again after {until}.",
        "gone_title": "This link no longer works",
        "gone_expired": "This link expired on {when}.",
        "gone_revoked": "The sender has withdrawn this link.",
        "gone_limit": "This link has reached its download limit.",
        "gone_blocked": "These files were blocked for security reasons (a virus was found).",
        "gone_ask": "If you still need the files, please ask the sender ({sender}).",
        "not_found_title": "Page not found",
        "not_found_body": "The link is not valid or not available. Please open the link exactly as it appears in the mail, without leaving anything out.",
        "forbidden_title": "This request was refused",
        "forbidden_csrf": "This page has expired or the request came from another site. Please reopen the download page and try again.",
        "forbidden_password": "Please enter the password first.",
        "locked_title": "Please wait",
        "server_error_title": "Something went wrong",
        "server_error_body": "The file could not be read. Please try again later or ask the sender.",
        "error_title": "The request could not be handled",
        "error_body": "This action is not available at this address.",
        "back": "Back to the download page",
        "back_manage": "Back to the management page",
        "forbidden_verify": "Please confirm your address with a one-time code first.",
        "forbidden_manage": "This page has expired or the request came from another site. Please reopen the management page and try again.",
        "otp_unavailable": "Codes cannot be sent at the moment. Please try again later.",
        "verify_heading": "Confirm your address",
        "verify_lead": "These files were sent to {address}. To confirm that you are the recipient, we will send a 6-digit code to that address.",
        "verify_send": "Send me a code",
        "verify_sent": "A code has been sent to {address}. It is valid until {until}.",
        "verify_code_label": "Code (6 digits)",
        "verify_submit": "Confirm",
        "verify_resend": "Send a new code",
        "verify_locked": "Codes for this link are locked: too many codes were requested or too many wrong codes were typed. The sender ({sender}) has been told. Once the sender unlocks the link, you can ask for a code again.",
        "otp_wrong": "Wrong code. {left} attempts left.",
        "otp_locked": "Too many wrong codes: this code no longer works. Please ask for a new one.",
        "otp_expired": "This code has expired. Please ask for a new one.",
        "otp_none": "Please ask for a code first.",
        "otp_wait": "You can ask for another code in {seconds} seconds.",
        "otp_client_limit": "Too many codes have been requested from your network. Please try again after {until}.",
        "manage_title": "Manage your transfer",
        "manage_lead": "The address of this page was sent to you alone. Please do not forward it.",
        "sent_at": "Sent",
        "max_expiry": "Latest possible expiry",
        "ended_note": "This transfer has ended: its expiry has passed.",
        "recipients": "Recipients",
        "link_state": "Link",
        "state_active": "Active",
        "state_revoked": "Revoked",
        "state_pending": "Not yet delivered",
        "state_failed": "Not delivered",
        "state_expired": "Expired",
        "delivered_at": "Delivered",
        "not_delivered": "-",
        "downloads": "Downloads",
        "downloads_none": "Not downloaded yet",
        "downloads_once": "Once ({at})",
        "downloads_many": "{count} times (first {first}, last {last})",
        "password_notice": "Password notice",
        "notice_pending": "Waiting to be sent (due {at})",
        "notice_sent": "Sent ({at})",
        "notice_gave_up": "Could not be sent",
        "notice_cancelled": "Cancelled",
        "revoke_one": "Revoke this link",
        "codes": "Verification codes",
        "codes_locked": "Locked since {at} ({reason})",
        "codes_locked_sends": "too many codes requested",
        "codes_locked_failures": "too many wrong codes typed",
        "codes_unlock": "Unlock codes",
        "revoke_all": "Revoke all links",
        "revoke_note": "A revoked link cannot be restored.",
        "extend_heading": "Extend the expiry",
        "extend_label": "Extend by",
        "extend_day_one": "1 day (until {until})",
        "extend_days": "{days} days (until {until})",
        "extend_max": "To the maximum (until {until})",
        "extend_submit": "Extend",
        "extend_limit_note": "The policy allows no expiry later than {until}.",
        "extend_at_max": "The expiry is already the latest the policy allows ({until}).",
        "extend_refused": "The expiry could not be extended: the new one must be later than the current one and no later than {until}.",
        "done_revoked": "The link has been revoked.",
        "done_extended": "The expiry has been extended.",
        "done_unchanged": "Nothing was changed.",
        "done_codes_unlocked": "Codes are unlocked: the recipient can ask for a code again.",
        "done_unlocked": "The ZIP has been opened. Recipients now get the files it held through their links, with no password.",
        "done_blocked": "A virus was found in the ZIP, so this transfer has been stopped.",
        "unlock_heading": "Open the ZIP with its password",
        "unlock_lead": "Type the encrypted ZIP's password here: the gateway opens the ZIP, scans it for viruses and gives the recipients the files it holds, with no password. There is no need to send the password by mail.",
        "unlock_label": "ZIP password",
        "unlock_submit": "Open the ZIP",
        "unlock_wrong": "This password does not open the ZIP.",
        "unlock_refused": "This ZIP cannot be opened safely, so it was not opened ({reason}). Recipients get the encrypted ZIP as it is.",
        "unlock_limited": "Too many attempts. Please wait about {minutes} minutes and try again.",
        "unlock_scan_unavailable": "Virus scanning is unavailable for the moment. Please try again later.",
        "unlock_busy": "The gateway is busy at the moment. Please try again in a little while.",
        "unlock_state_unlocked": "The ZIP was opened at {at}; recipients get the files it held.",
        "unlock_state_blocked": "This transfer is stopped: a virus was found ({reason}).",
        "unlock_state_refused": "The ZIP cannot be opened safely, so it is passed on encrypted ({reason}).",
    },
}


class Translator:
    """`t("key", name=value)`: the message in one locale with the values filled in."""

    def __init__(self, locale: str):
        self.locale = locale if locale in LOCALES else DEFAULT_LOCALE
        self._messages = MESSAGES[self.locale]

    def __call__(self, key: str, **values: object) -> str:
        text = self._messages[key]
        return text.format(**values) if values else text


def _quality(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if 0.0 <= value <= 1.0 else 0.0


def from_accept_language(header: str) -> str | None:
    """The supported locale the header likes best (first listed wins a tie), or None."""
    best: tuple[float, str] | None = None
    for entry in header.split(",")[:_MAX_LANGUAGE_RANGES]:
        tag, *params = (piece.strip() for piece in entry.split(";"))
        primary = tag.split("-", 1)[0].lower()
        if primary not in LOCALES:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                quality = _quality(value.strip())
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, primary)
    return best[1] if best else None


def choose_locale(query: Mapping[str, str], cookies: Mapping[str, str], accept_language: str
                  ) -> str:
    for candidate in (query.get("lang"), cookies.get("lang")):
        if candidate in LOCALES:
            return candidate
    return from_accept_language(accept_language) or DEFAULT_LOCALE
