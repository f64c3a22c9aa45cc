"""schemathesis hooks for the schema fuzz test (tests/src/integration/schema_fuzz.rs).

They make each generated request one a real client of ours would send, and nothing
more, so every check judges the API and not the fuzzer's habits:

- a valid `Idempotency-Key` is made unique per request. The fuzzer reuses short values
  ("0") across unrelated requests; the contract answers such reuse with 422
  IDEMPOTENCY_KEY_REUSED, which is right, but would count as a valid request refused.
  Replays are tested on their own (idempotency.rs). Invalid keys are sent as generated.
- in a request generated as valid, a present `Stripe-Signature` is replaced by a genuine
  one over the exact body, as Stripe signs, so valid events reach the code behind the
  signature check. Requests generated as invalid keep the fuzzer's signature (and must
  be refused); a missing header stays missing.
"""

import hashlib
import hmac
import json
import os
import time
import uuid

import schemathesis

WEBHOOK_SECRET = os.environ["RSOLV_FUZZ_WEBHOOK_SECRET"]


def _valid_key(value):
    return isinstance(value, str) and 1 <= len(value) <= 255 and all("!" <= c <= "~" for c in value)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    key = headers.get("Idempotency-Key")
    if _valid_key(key):
        headers["Idempotency-Key"] = f"{key[:200]}-{uuid.uuid4().hex}"
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    if positive and "Stripe-Signature" in headers and isinstance(case.body, (dict, list, str, int, float, bool)):
        # What `requests` sends for a JSON body (no simplejson here): json.dumps, UTF-8.
        payload = json.dumps(case.body, allow_nan=False)
        timestamp = int(time.time())
        mac = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
        headers["Stripe-Signature"] = f"t={timestamp},v1={mac}"
