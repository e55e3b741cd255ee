"""The reference of benches/rules200.rs: the same 200 rules and the same events in
durable_rules (Python, rules matched in memory by its C engine, no durability), each matching
event running a handler that does `x = 1`.

Usage: python3 durable_rules_p1.py EVENTS.jsonl
Prints: events/s.
"""
import json
import sys
import time

from durable.lang import m, post, ruleset, when_all

EVENT_TYPES = 20
DEPARTMENTS = 10

with ruleset("p1"):
    for n in range(EVENT_TYPES):
        for d in range(DEPARTMENTS):
            def make(n=n, d=d):
                def handler(c):
                    x = 1  # noqa: F841 (the work of the rule)
                handler.__name__ = f"r_{n}_{d}"
                when_all((m.event_type == f"e{n}") & (m.department == f"d{d}"))(handler)
            make()

events = [json.loads(line) for line in open(sys.argv[1])]
start = time.perf_counter()
for e in events:
    try:
        post("p1", e)
    except Exception:  # an event no rule matches is refused by durable_rules
        pass
elapsed = time.perf_counter() - start
print(f"{len(events) / elapsed:.0f}")
