#!/usr/bin/env python3
"""Verifies recorded webhook deliveries the way a customer's receiver does: with the official
Standard Webhooks library (PyPI `standardwebhooks`), nothing of Hookline's own.

    verify_standard_webhooks.py --secret-file SECRET_FILE REQUESTS.jsonl

SECRET_FILE holds the `whsec_...` key (more than one file: each is tried, as a receiver does
during a key rotation). REQUESTS.jsonl has one request per line:
    {"headers": {"webhook-id": "...", ...}, "body_hex": "<the body bytes, hex>"}
Prints one JSON line per request, in input order:
    {"index": 0, "id": "<webhook-id>", "verified": true, "type": "<payload type>"}
    {"index": 1, "id": "<webhook-id>", "verified": false, "error": "No matching signature found"}
then exits 0; exits non-zero on bad usage or input.
"""
import argparse
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secret-file", action="append", required=True)
    ap.add_argument("requests")
    args = ap.parse_args()
    verifiers = []
    for path in args.secret_file:
        with open(path) as f:
            verifiers.append(Webhook(f.read().strip()))
    with open(args.requests) as f:
        lines = [line for line in f if line.strip()]
    for index, line in enumerate(lines):
        request = json.loads(line)
        headers = request["headers"]
        body = bytes.fromhex(request["body_hex"])
        result = {"index": index, "id": headers.get("webhook-id"), "verified": False}
        errors = []
        for verifier in verifiers:
            try:
                payload = verifier.verify(body, headers)
            except WebhookVerificationError as e:
                errors.append(str(e))
                continue
            result["verified"] = True
            result["type"] = payload.get("type")
            break
        if not result["verified"]:
            result["error"] = "; ".join(errors)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
