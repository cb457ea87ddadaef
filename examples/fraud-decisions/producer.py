#!/usr/bin/env python3
"""Publishes a realistic stream of fraud decisions to a tenant's Hookline events topic.

Each transaction gets a first decision (APPROVE, REJECT or REVIEW); a REVIEW is later resolved
to APPROVE or REJECT. Records are keyed by transaction id, so Hookline delivers a transaction's
decisions in order (ordering: PerKey). Producer settings: acks=all and idempotence, so an
acknowledged event is durable.

    producer.py --bootstrap 127.0.0.1:9092 --namespace acme-fraud --count 200 --rate 100
"""
import argparse
import json
import random
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Producer

DECISION_TYPE = {"APPROVE": "transaction.approved", "REJECT": "transaction.rejected", "REVIEW": "transaction.review"}
REASONS = {
    "APPROVE": [["low_risk_score"], ["known_device", "trusted_merchant"]],
    "REJECT": [["velocity_limit"], ["stolen_card_list"], ["geo_mismatch", "new_device"]],
    "REVIEW": [["amount_above_threshold"], ["new_payee"], ["unusual_hour", "new_device"]],
}


def event(tx, decision, previous, amount, currency):
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "type": DECISION_TYPE[decision],
        "timestamp": now,
        "data": {
            "transactionId": tx,
            "decision": decision,
            "previousDecision": previous,
            "amount": amount,
            "currency": currency,
            "reasonCodes": random.choice(REASONS[decision]),
            "decidedAt": now,
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--namespace", required=True, help="tenant namespace; the topic is hookline.<namespace>.events")
    ap.add_argument("--count", type=int, default=100, help="transactions (reviews add a second event)")
    ap.add_argument("--rate", type=float, default=50.0, help="events per second, at most")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    random.seed(args.seed)
    topic = f"hookline.{args.namespace}.events"
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    failures = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))

    pending_reviews = []
    sent = 0
    interval = 1.0 / args.rate
    for i in range(args.count):
        tx = f"tx_{uuid.uuid4().hex[:12]}"
        amount = round(random.lognormvariate(4, 1.2), 2)
        currency = random.choice(["EUR", "USD", "GBP"])
        decision = random.choices(["APPROVE", "REJECT", "REVIEW"], weights=[80, 8, 12])[0]
        producer.produce(topic, key=tx, value=json.dumps(event(tx, decision, None, amount, currency)), on_delivery=on_delivery)
        sent += 1
        if decision == "REVIEW":
            pending_reviews.append((tx, amount, currency))
        # Resolve an older review now and then: REVIEW -> APPROVE or REVIEW -> REJECT.
        if pending_reviews and (random.random() < 0.3 or i == args.count - 1):
            rtx, ramount, rcur = pending_reviews.pop(0)
            final = random.choice(["APPROVE", "REJECT"])
            producer.produce(topic, key=rtx, value=json.dumps(event(rtx, final, "REVIEW", ramount, rcur)), on_delivery=on_delivery)
            sent += 1
        producer.poll(0)
        time.sleep(interval)
    for rtx, ramount, rcur in pending_reviews:
        final = random.choice(["APPROVE", "REJECT"])
        producer.produce(topic, key=rtx, value=json.dumps(event(rtx, final, "REVIEW", ramount, rcur)), on_delivery=on_delivery)
        sent += 1
    left = producer.flush(30)
    if left or failures:
        print(f"producer: {left} events not acknowledged, {len(failures)} failed: {failures[:3]}", file=sys.stderr)
        return 1
    print(f"producer: {sent} events acknowledged by Kafka on {topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
