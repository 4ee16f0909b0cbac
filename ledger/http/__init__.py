"""The HTTP app a server runs: routes and probes, who is asking, request intake and the web page."""
