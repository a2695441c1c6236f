"""The daemon's Prometheus exporter: real HTTP on port 0, values from a real journal."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from federation.exporter import DaemonMetrics
from federation.journal import JournalReader, RoundJournal


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_metrics_follow_the_journal(tmp_path: Path):
    journal = RoundJournal(tmp_path / "journal.jsonl")
    journal.record("round_started", server_round=1)
    journal.record(
        "round_completed",
        server_round=1,
        loss=0.25,
        num_examples=120,
        bytes_sent=4000,
        bytes_received=5000,
        eps_spent=1.5,
        eps_remaining=6.5,
        duration_s=42.0,
    )
    journal.record("round_declined", server_round=2, reason="privacy budget", eps_remaining=6.5)
    journal.record("promotion", outcome="kept", version="000002-x", candidate_f1=0.7)
    metrics = DaemonMetrics("hospital-a")
    port = metrics.serve("127.0.0.1", 0)
    try:
        assert metrics.follow(JournalReader(journal.path)) == 4
        text = _scrape(port)
    finally:
        metrics.close()
    h = 'hospital="hospital-a"'
    expected = [
        f'appliance_federation_rounds_total{{{h},outcome="started"}} 1.0',
        f'appliance_federation_rounds_total{{{h},outcome="completed"}} 1.0',
        f'appliance_federation_rounds_total{{{h},outcome="declined"}} 1.0',
        f'appliance_federation_bytes_total{{direction="sent",{h}}} 4000.0',
        f'appliance_federation_bytes_total{{direction="received",{h}}} 5000.0',
        f"appliance_federation_local_examples{{{h}}} 120.0",
        f"appliance_federation_local_loss{{{h}}} 0.25",
        f"appliance_federation_epsilon_spent{{{h}}} 1.5",
        f"appliance_federation_epsilon_remaining{{{h}}} 6.5",
        f"appliance_federation_last_round_duration_seconds{{{h}}} 42.0",
        f'appliance_federation_promotions_total{{{h},outcome="kept"}} 1.0',
        f"appliance_federation_local_f1{{{h}}} 0.7",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ]
    missing = [line for line in expected if line not in text]
    assert not missing, missing


def test_a_node_without_dp_exports_no_privacy_gauges(tmp_path: Path):
    # Prepare: rounds that spent no privacy budget (DP off) carry no eps fields
    journal = RoundJournal(tmp_path / "journal.jsonl")
    journal.record("round_started", server_round=1)
    journal.record("round_completed", server_round=1, loss=0.3, num_examples=80, bytes_sent=10)
    metrics = DaemonMetrics("hospital-a")
    port = metrics.serve("127.0.0.1", 0)

    # Execute
    try:
        metrics.follow(JournalReader(journal.path))
        text = _scrape(port)
    finally:
        metrics.close()

    # Assert: no epsilon sample at all (a 0 would read as "nothing left" on a dashboard)
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert (
        'appliance_federation_rounds_total{hospital="hospital-a",outcome="completed"} 1.0' in text
    )
    assert not [line for line in samples if "epsilon" in line]
