"""The web console every node serves at ``/console``: its staff's daily work in a browser.

The console is a small front end without a build step (plain HTML, CSS and ES-module JavaScript,
plots as inline SVG) served from :mod:`connectors.node.console.static` by this node, so it works
offline. It calls the same management API as the CLI: signing in exchanges the node's admin token
for a server-side session (:mod:`connectors.node.console.sessions`) that
:func:`connectors.node.deps.require_admin` accepts as an alternative to ``Authorization: Bearer``.
"""

__all__: list[str] = []
