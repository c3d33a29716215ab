#!/usr/bin/env python3
"""Prints the table of broker/bench/compare.sh from its JSON lines: medians over the rounds
of each scenario, MQTT version and broker, fieldbridge's ratio to Mosquitto (and rumqttd),
and, when the runs used more than one MQTT version, each broker's MQTT 5 figure against
its 3.1.1 one."""

import json
import statistics
import sys
from collections import defaultdict

BROKERS = ["fieldbridge", "mosquitto", "rumqttd", "baseline"]

# scenario -> (title, [(metric label, extractor, unit, better, target ratio vs Mosquitto)])
def received(run):
    return run.get("received_per_sec")


def lost_pct(run):
    expected = run.get("expected_per_subscriber", 0) * run.get("subscribers", 0)
    missing = run.get("lost_total", 0) + run.get("undelivered_total", 0)
    return 100.0 * missing / expected if expected else None


def cpu_per_delivery(run):
    total = run.get("received_total")
    return 1e6 * run["broker_cpu_secs"] / total if total else None


def latency(key):
    return lambda run: (run.get("latency") or {}).get(key)


THROUGHPUT = [
    ("received msg/s", received, "higher", 1.5),
    ("delivered msg/s, to the last delivery", lambda run: run.get("delivered_per_sec_overall"), "higher", None),
    ("lost %", lost_pct, "lower", None),
    ("broker CPU µs/delivery", cpu_per_delivery, "lower", None),
    ("generator CPU s", lambda run: run.get("bench_cpu_secs"), "lower", None),
]
LATENCY = [
    ("p99 µs", latency("p99_us"), "lower", 1.0),
    ("p50 µs", latency("p50_us"), "lower", None),
    ("max µs", latency("max_us"), "lower", None),
    ("received msg/s", received, "higher", None),
    ("lost %", lost_pct, "lower", None),
    ("broker CPU µs/delivery", cpu_per_delivery, "lower", None),
]
def peak_rss_mib(run):
    kib = run.get("broker_peak_rss_kib")
    return kib / 1024 if kib else None


BACKPRESSURE = [
    ("received msg/s", received, "higher", None),
    ("delivered msg/s, to the last delivery", lambda run: run.get("delivered_per_sec_overall"), "higher", 5.0),
    ("lost %", lost_pct, "lower", None),
    ("broker peak RSS MiB", peak_rss_mib, "lower", None),
    ("broker CPU µs/delivery", cpu_per_delivery, "lower", None),
]
SCENARIOS = {
    "fanin-q0": ("fan-in 100 -> 1, QoS 0, flat out", THROUGHPUT),
    "fanin-q1": ("fan-in 100 -> 1, QoS 1, flat out (32 in flight per publisher)", THROUGHPUT),
    "fanout-q0": ("fan-out 1 -> 1,000, QoS 0, flat out", THROUGHPUT),
    "latency-fanin": ("10 publishers x 1,000 msg/s -> 1, QoS 0", LATENCY),
    "latency-fanout": ("1 publisher x 20 msg/s -> 1,000, QoS 0", LATENCY),
    "idle-10k": (
        "10,000 idle connections",
        [
            ("KiB RSS per connection", lambda run: run.get("kib_per_connection"), "lower", 2.0),
            ("connections open", lambda run: run.get("connections_open"), "higher", None),
        ],
    ),
    "fanin-q1-defaults": ("fan-in 100 -> 1, QoS 1, flat out, default limits", BACKPRESSURE),
}
RATE_PREFIX = "rate-q1-"
P99_LIMIT_US = 10_000


def passes_rate_step(run):
    """No message lost or left undelivered, p99 under the limit, a clean exit."""
    p99 = (run.get("latency") or {}).get("p99_us")
    return (run.get("exit") == 0 and p99 is not None and p99 < P99_LIMIT_US
            and run.get("lost_total", 1) == 0 and run.get("undelivered_total", 1) == 0)


def rate_sweep(runs, protocols, brokers):
    """The highest total rate of rate-q1 that each broker passed, per round (steps run in
    rising order until one fails); the median over rounds."""
    print("\nHighest QoS 1 fan-in rate (100 publishers -> 1, default limits) with nothing lost "
          f"and p99 < {P99_LIMIT_US // 1000} ms, msg/s:\n")
    header = ["MQTT", *brokers, *[f"fieldbridge / {b}" for b in brokers if b != "fieldbridge"], "target", "met"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for protocol in protocols:
        best = {}
        for broker in brokers:
            per_round = defaultdict(int)
            for (scenario, proto, name), items in runs.items():
                if proto != protocol or name != broker or not scenario.startswith(RATE_PREFIX):
                    continue
                rate = int(scenario[len(RATE_PREFIX):])
                for run in items:
                    round_ = run.get("round")
                    per_round.setdefault(round_, 0)
                    if passes_rate_step(run):
                        per_round[round_] = max(per_round[round_], rate)
            best[broker] = statistics.median(per_round.values()) if per_round else None
        ratios = []
        for other in brokers:
            if other == "fieldbridge":
                continue
            a, b = best.get("fieldbridge"), best.get(other)
            ratios.append(f"{a / b:.2f}" if a is not None and b else "–")
        met = "?"
        if best.get("fieldbridge") is not None and best.get("mosquitto"):
            met = "yes" if best["fieldbridge"] >= 2 * best["mosquitto"] else "**no**"
        print("| " + " | ".join([protocol, *[fmt(best[b]) for b in brokers], *ratios, ">= 2x mosquitto", met]) + " |")


def fmt(value):
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def main(path):
    runs = defaultdict(list)
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if line:
                run = json.loads(line)
                protocol = run.get("protocol") or "3.1.1"
                runs[(run.get("scenario"), protocol, run.get("broker_name"))].append(run)
    protocols = sorted({key[1] for key in runs})
    brokers = [b for b in BROKERS if any(key[2] == b for key in runs)]
    others = [b for b in brokers if b != "fieldbridge"]
    header = ["scenario", "metric", *brokers, *[f"fieldbridge / {b}" for b in others], "target", "met"]
    if any(key[0] in SCENARIOS for key in runs):
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    failures = []
    def median(scenario, protocol, broker, extract):
        values = [v for v in map(extract, runs.get((scenario, protocol, broker), [])) if v is not None]
        return statistics.median(values) if values else None

    for scenario, (scenario_title, metrics) in SCENARIOS.items():
        for protocol in protocols:
            if not any(key[:2] == (scenario, protocol) for key in runs):
                continue
            title = scenario_title if len(protocols) == 1 else f"{scenario_title}, MQTT {protocol}"
            for label, extract, better, target in metrics:
                medians = {broker: median(scenario, protocol, broker, extract) for broker in brokers}
                ratios = []
                for other in others:
                    a, b = medians.get("fieldbridge"), medians.get(other)
                    ratios.append(a / b if a is not None and b else None)
                target_text, met = "", ""
                if target is not None:
                    target_text = f"{'>=' if better == 'higher' else '<='} {target}x mosquitto"
                    ratio = ratios[0] if ratios else None
                    if ratio is None:
                        met = "?"
                    elif (better == "higher" and ratio >= target) or (better == "lower" and ratio <= target):
                        met = "yes"
                    else:
                        met = "**no**"
                row = [title, label, *[fmt(medians[b]) for b in brokers],
                       *[f"{r:.2f}" if r is not None else "–" for r in ratios], target_text, met]
                print("| " + " | ".join(row) + " |")
                title = ""
            for broker in brokers:
                for run in runs.get((scenario, protocol, broker), []):
                    if run.get("first_failure") or run.get("exit"):
                        failures.append(f"{scenario} MQTT {protocol} on {broker}, round {run.get('round')}: exit {run.get('exit')}, "
                                        f"{run.get('connections_failed', '?')} connection(s) failed, first: {run.get('first_failure')}")
    if "3.1.1" in protocols and "5" in protocols:
        print("\nMQTT 5 against MQTT 3.1.1, same broker (5 / 3.1.1):\n")
        header = ["scenario", "metric", *brokers]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for scenario, (title, metrics) in SCENARIOS.items():
            for label, extract, better, target in metrics:
                if target is None:
                    continue
                cells = []
                for broker in brokers:
                    a = median(scenario, "5", broker, extract)
                    b = median(scenario, "3.1.1", broker, extract)
                    cells.append(f"{a / b:.3f}" if a is not None and b else "–")
                if any(cell != "–" for cell in cells):
                    print("| " + " | ".join([title, label, *cells]) + " |")
    if any(key[0].startswith(RATE_PREFIX) for key in runs):
        rate_sweep(runs, protocols, brokers)
    rounds = max((len(v) for v in runs.values()), default=0)
    print(f"\nMedians over {rounds} round(s); ratios are fieldbridge's figure divided by the other broker's.")
    for failure in failures:
        print(f"- {failure}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py RESULTS.jsonl")
    main(sys.argv[1])
