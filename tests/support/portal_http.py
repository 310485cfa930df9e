"""HTTP to a running gateway's portal (tests.support.running.RunningGateway), as a browser
without JavaScript or a link scanner would: plain urllib, redirects not followed."""

from __future__ import annotations

import html
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from tests.support.ppap import SENDER
from tests.support.received import body_text
from tests.support.config import PUBLIC_URL

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FILE_ID = re.compile(r'action="/d/[^"/]+/f/([0-9a-f]+)"')


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Portal:
    """Plain HTTP to the running gateway's portal; redirects are not followed."""

    def __init__(self, running):
        self.base = f"http://127.0.0.1:{running.gateway.portal_port}"

    def request(self, path: str, form: dict | None = None, method: str | None = None,
                **headers: str) -> Reply:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={k.replace("_", "-"): v
                                                  for k, v in headers.items()})
        try:
            with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as response:
                return Reply(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, error.read(), dict(error.headers))

    def csrf(self, token: str, **headers: str) -> str:
        return CSRF.search(self.request(f"/d/{token}", **headers).text).group(1)

    def post(self, token: str, action: str, form: dict, **headers: str) -> Reply:
        return self.request(f"/d/{token}{action}", form, Origin=self.base, **headers)

    def download(self, token: str, **headers: str) -> Reply:
        page = self.request(f"/d/{token}", **headers).text
        action = f"/f/{FILE_ID.search(page).group(1)}"
        return self.post(token, action, {"csrf": CSRF.search(page).group(1)}, **headers)


def download_once(running, token: str) -> bytes:
    """GET the landing page, then POST its download form, as a browser without JavaScript does."""
    base = f"http://127.0.0.1:{running.gateway.portal_port}"
    with urllib.request.urlopen(f"{base}/d/{token}", timeout=10) as page:
        text = page.read().decode()
    action = html.unescape(re.search(r'<form method="post" action="([^"]*/f/[^"]+)"', text).group(1))
    csrf = html.unescape(re.search(r'name="csrf" value="([^"]+)"', text).group(1))
    form = urllib.parse.urlencode({"csrf": csrf}).encode()
    with urllib.request.urlopen(urllib.request.Request(base + action, data=form), timeout=10) as got:
        return got.read()


def portal(running, path: str, form: dict | None = None):
    """(status, body) of a GET or a form POST; redirects are not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    url = f"http://127.0.0.1:{running.gateway.portal_port}{path}"
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(), dict(error.headers)


def manage_token(running, sink, already: int) -> str:
    """The management token of the sender's receipt, the message after the first `already`."""
    running.advance(minutes=2)
    (receipt,) = [m for m in sink.wait_for(already + 1)[already:] if m.rcpt_tos == [SENDER]]
    return re.findall(re.escape(PUBLIC_URL) + r"/m/([A-Za-z0-9_-]+)", body_text(receipt.data))[0]


def unlock_form(running, token: str, password: str):
    """Post the sender's unlock form on the management page."""
    status, page, _ = portal(running, f"/m/{token}")
    assert status == 200
    csrf = html.unescape(re.search(r'name="csrf" value="([^"]+)"', page).group(1))
    return portal(running, f"/m/{token}/unlock", {"csrf": csrf, "password": password})
