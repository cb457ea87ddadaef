"""Schemathesis hooks of tests/tests/api_schemathesis.rs: loopback only, in every phase.

The config pins `spec.url` of generated bodies to the test's receiver, but not every phase
applies that pin (the coverage phase builds its own bodies). So before each request, a
`spec.url` that could be a real http(s) URL (the cluster refuses anything without `://`) and
is not the receiver's is replaced by the receiver's: no Webhook this run makes or changes can
send a test event off the machine. Schemathesis re-checks the case against the document after
the change, so a case stays counted as valid or invalid for what is actually sent.
"""

import os

import schemathesis

RECEIVER = os.environ["HOOKLINE_FUZZ_URL"]


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/"


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    spec = body.get("spec") if isinstance(body, dict) else None
    url = spec.get("url") if isinstance(spec, dict) else None
    if isinstance(url, str) and "://" in url and not url.startswith(_origin(RECEIVER)):
        spec["url"] = RECEIVER
