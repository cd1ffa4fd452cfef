"""A minimal CBX1 API on 127.0.0.1 for command-line tests: auth, /bulk and /upsert, an upsert store."""

from __future__ import annotations

import json
import threading
import typing as t
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "stub-session-token-0001"


class StubApi:
    """Starts on a free port; `stored` maps lookup keys to the ids it gave them."""

    def __init__(self, access_key: str, org_id: str) -> None:
        self.access_key = access_key
        self.org_id = org_id
        self.stored: dict[str, str] = {}
        self.requests: list[tuple[str, t.Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def upsert(self, payload: dict) -> dict:
        key = payload.get("domain") or payload.get("email")
        if not key or key.endswith(".invalid"):
            return {"success": False, "id": None, "lookupKey": key, "error": "Invalid lookup key"}
        record_id = self.stored.setdefault(key, str(uuid.uuid4()))
        return {"success": True, "id": record_id, "lookupKey": key}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: t.Any) -> None:
                """Quiet: tests read what the stub recorded instead."""

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                if query.get("code") != [api.access_key] or query.get("orgId") != [api.org_id]:
                    self._answer(401, {"status": {"code": "AU401", "message": "Invalid access key"}})
                    return
                self._answer(
                    200, {"status": {"code": "CM000"}, "data": {"sessionToken": TOKEN, "maxAge": 3600}}
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append((self.path, body))
                authorised = self.headers.get("Authorization") == f"Bearer {TOKEN}"
                if not authorised or self.headers.get("x-organisation-id") != api.org_id:
                    self._answer(401, {"status": {"code": "AU401", "message": "Unauthorised"}})
                    return
                if self.path.endswith("/bulk"):
                    results = [api.upsert(payload) for payload in body][::-1]
                    self._answer(200, {"status": {"code": "CM000"}, "data": {"results": results}})
                else:
                    self._answer(200, {"status": {"code": "CM000"}, "data": api.upsert(body)})

        return Handler
