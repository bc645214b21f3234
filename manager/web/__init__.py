"""The manager's web pages: the admin console under /admin (and, next, the self-service portal).

Pages are rendered on the server with Jinja2 (templates/) and a little JavaScript of our own (static/); nothing
comes from a CDN or needs a build step. A page reads through the same service functions as the API, under the
same permission checks; every change a page makes goes through the JSON API (/api/v1) with the session's CSRF
token, so there is one implementation of each action. Why this stack: docs/web.md.
"""
from manager.web.app import install_web

__all__ = ["install_web"]
