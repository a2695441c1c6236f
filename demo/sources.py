"""What the demo takes from the source checkout: the Flower app, BC5CDR and a sample note."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # pyproject.toml's [tool.flwr.app]
DATA = ROOT / "data" / "bc5cdr"  # the vendored BC5CDR (train/devel/test.tsv), CC-BY 4.0
# The consortium's public warm start: the demo's LoRA on the embedded model trained on the first
# PUBLIC_NOTES development sentences (no box holds them; their held-out notes come after them).
# `python -m demo --make-warm-start` rebuilds it; data/warm-start/README.md says how it was made.
PUBLIC_NOTES = 3000
WARM_START = ROOT / "data" / "warm-start" / "embedded-lora16-top8-devel3000.npz"

SAMPLE_NOTE = (
    "72-year-old woman admitted with acute kidney injury after a two-week course of "
    "ibuprofen and lisinopril for osteoarthritis pain. History of type 2 diabetes mellitus "
    "on metformin and hypertension. Creatinine rose from 1.1 to 3.4 mg/dL. NSAIDs were "
    "stopped, metformin was held, and she was started on intravenous saline. Cisplatin-induced "
    "nephrotoxicity was excluded. Discharged on amlodipine; follow up for chronic kidney disease."
)


def check_data(folder: Path) -> Path:
    """`folder` if it holds BC5CDR's three splits; otherwise say what is missing."""
    missing = [
        name for name in ("train.tsv", "devel.tsv", "test.tsv") if not (folder / name).is_file()
    ]
    if missing:
        raise ValueError(f"--data {folder}: missing {', '.join(missing)} (BC5CDR in IOB form)")
    return folder
