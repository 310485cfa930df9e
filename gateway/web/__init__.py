"""The download portal that serves the links the relay mails out (see portal.build_portal_app)."""

from gateway.web.portal import build_portal_app

__all__ = ["build_portal_app"]
