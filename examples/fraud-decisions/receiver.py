#!/usr/bin/env python3
"""A customer's webhook receiver: verifies each delivery with the official Standard Webhooks
library, de-duplicates by webhook-id (deliveries are at least once), and prints what it got.

    receiver.py --port 8000 --secret-file all=secret-all.txt --secret-file rejected=... --secret-file review=...

Each path (/all, /rejected, /review) has its own Webhook and so its own signing secret
(`kubectl -n acme-fraud get secret all-decisions-signing -o jsonpath='{.data.secret}' | base64 -d`).
A delivery that does not verify is answered 400 and never processed. With --log FILE every
verified event is appended there as a JSON line (the demo reads it).
"""
import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

seen = set()
lock = threading.Lock()


def make_handler(verifiers, log):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            path = self.path.strip("/")
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            verifier = verifiers.get(path)
            if verifier is None:
                self.send_response(404)
                self.end_headers()
                return
            try:
                payload = verifier.verify(body, dict(self.headers))
            except WebhookVerificationError as e:
                print(f"[{path}] REFUSED: signature does not verify ({e})", flush=True)
                self.send_response(400)
                self.end_headers()
                return
            msg_id = self.headers["webhook-id"]
            with lock:
                duplicate = (path, msg_id) in seen
                seen.add((path, msg_id))
            if not duplicate:
                d = payload.get("data", {})
                prev = f" (was {d['previousDecision']})" if d.get("previousDecision") else ""
                with lock:  # one line at a time: print writes the text and the newline separately
                    print(f"[{path}] verified {payload['type']:<22} {d.get('transactionId')} {d.get('decision')}{prev} "
                          f"{d.get('amount')} {d.get('currency')}", flush=True)
                if log:
                    with lock, open(log, "a") as f:
                        f.write(json.dumps({"path": path, "id": msg_id, "event": payload}) + "\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--secret-file", action="append", default=[], help="PATH=FILE with the whsec_ secret")
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    verifiers = {}
    for spec in args.secret_file:
        path, file = spec.split("=", 1)
        verifiers[path] = Webhook(open(file).read().strip())
    server = ThreadingHTTPServer((args.host, args.port), make_handler(verifiers, args.log))
    print(f"receiver: listening on http://{args.host}:{args.port}/ for {sorted(verifiers)}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
