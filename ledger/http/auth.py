"""Who is asking: bearer tokens through the mcp SDK's token verification hook.

For development, ``LEDGER_TOKENS_FILE`` names a file of ``TOKEN PRINCIPAL`` lines (``#`` starts a
comment). In production pass any ``TokenVerifier`` (an OAuth introspection client, a JWT check)
to ``create_app``. The principal of a request is the token's subject, else its client id; every
task belongs to the principal that created it.

Without tokens every client is the same (anonymous) principal, so a server without them serves
only on loopback unless ``LEDGER_ALLOW_UNAUTHENTICATED`` says otherwise.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from mcp.server.auth.provider import AccessToken, TokenVerifier

from ledger.settings import Settings, SettingsError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StaticTokens:
    """Tokens from a file: ``TOKEN PRINCIPAL`` per line."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    @classmethod
    def from_file(cls, path: Path) -> StaticTokens:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(f"LEDGER_TOKENS_FILE: cannot read {path}: {exc.strerror}") from None
        tokens: dict[str, str] = {}
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2:
                raise SettingsError(f"LEDGER_TOKENS_FILE {path}:{number}: expected 'TOKEN PRINCIPAL'")
            tokens[words[0]] = words[1]
        if not tokens:
            raise SettingsError(f"LEDGER_TOKENS_FILE {path} holds no tokens")
        return cls(tokens)

    async def verify_token(self, token: str) -> AccessToken | None:
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return AccessToken(token=token, client_id=principal, subject=principal, scopes=[])
        return None


def token_verifier(settings: Settings) -> TokenVerifier | None:
    return StaticTokens.from_file(Path(settings.tokens_file)) if settings.tokens_file else None


def check_exposure(settings: Settings, host: str, verifier: TokenVerifier | None) -> None:
    """Refuse to serve every task to anyone on a non-loopback address without being told to."""
    allowed = settings.allow_unauthenticated.strip().lower() in ("1", "true", "yes")
    if verifier is None and host not in LOOPBACK and not allowed:
        raise SettingsError(f"refusing to serve without authentication on {host}: set LEDGER_TOKENS_FILE (or pass "
                            "a token verifier), or LEDGER_ALLOW_UNAUTHENTICATED=1 to serve anyway")
