"""The baseline a user would pick: transformers' `pipeline("token-classification")` in fp32.

Run by benchmarks/serving.py in its own process (so its peak RSS is its own):

    .venv/bin/python benchmarks/serving_pipeline.py --model DIR --notes notes.json \
        --concurrency 1 8 32

`DIR` is a plain Hugging Face checkpoint (the benchmark's package merged into its base and saved
with `save_pretrained`). "Concurrency" c means the pipeline is called with `batch_size=c` over the
notes, the way a user gets throughput out of it; each note's latency is its batch's wall time.
Prints one JSON object: per concurrency the wall time and latencies, the entities of the c=1 run,
and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory (VmHWM) in MB; stdlib only, so serving.py shares it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(model: str, texts: list[str], concurrency: list[int]) -> dict[str, Any]:
    from transformers import pipeline

    ner = pipeline("token-classification", model=model, aggregation_strategy="simple", device="cpu")
    ner(texts[0])  # warm-up
    out: dict[str, Any] = {"runs": {}, "entities": []}
    for c in concurrency:
        latencies: list[float] = []
        started = time.perf_counter()
        results: list[Any] = []
        for i in range(0, len(texts), c):
            t0 = time.perf_counter()
            chunk = ner(texts[i : i + c], batch_size=c)
            latencies += [time.perf_counter() - t0] * len(chunk)
            results += chunk
        out["runs"][str(c)] = {"wall_s": time.perf_counter() - started, "latencies": latencies}
        if c == concurrency[0]:
            out["entities"] = [
                [[int(e["start"]), int(e["end"]), str(e["entity_group"])] for e in note]
                for note in results
            ]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--notes", required=True, type=Path, help="JSON list of note texts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    texts = json.loads(args.notes.read_text(encoding="utf-8"))
    print(json.dumps(run(args.model, texts, args.concurrency)))


if __name__ == "__main__":
    main()
