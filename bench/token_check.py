"""CPU per bearer-token check of ledger's OAuthVerifier, one token sent with every request (as a client
does): its signature checked each time, against its verdict kept (``VERDICT_TTL_S``). The issuer is a
local HTTP server of one RS256 key.

    python bench/token_check.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ledger.http.oauth import OAuthVerifier  # noqa: E402

CHECKS = 5000
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "alg": "RS256", "use": "sig"}


class Issuer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = {"issuer": ISS, "jwks_uri": ISS + "/jwks"} if "well-known" in self.path else {"keys": [jwk]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
ISS = f"http://127.0.0.1:{server.server_address[1]}"
threading.Thread(target=server.serve_forever, daemon=True).start()
AUD = "http://127.0.0.1:8000/mcp"
token = jwt.encode({"iss": ISS, "aud": AUD, "sub": "alice", "exp": int(time.time()) + 3600, "scope": "tasks"},
                   key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})



async def main() -> None:
    verifier = OAuthVerifier(ISS, AUD)
    assert (await verifier.verify_token(token)).subject == "alice"
    # The signature check is what verify_token did on every request before verdicts were kept.
    for label, check in (("signature checked every request", verifier._checked_signature),
                         ("verdict kept", verifier.verify_token)):
        cpu = time.process_time()
        for _ in range(CHECKS):
            assert await check(token) is not None
        print(f"{label}: {1e6 * (time.process_time() - cpu) / CHECKS:.1f} µs of CPU per check (RS256, {CHECKS} checks)")
    await verifier.aclose()


if __name__ == "__main__":
    asyncio.run(main())
