"""The soak benchmark's model versions: one quick package of the embedded model, head-perturbed
copies of it (distinct weights, same network), their ONNX exports made before the load starts.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from appliance.package_meta import META, WEIGHTS, read_package_meta, weights_record
from appliance.registry import ModelRegistry

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "appliance")
# A quick package: the soak measures serving, not F1. Two top layers of SmolLM2-135M + the head,
# causal attention (the served network is the plain forward), one epoch on 1000 sentences.
PACKAGE_ARGS = [
    "--train", "data/bc5cdr/train.tsv", "--max-train-notes", "1000", "--epochs", "1",
    "--layers", "top:2", "--attention", "causal", "--no-progress",
]  # fmt: skip
HEAD = "score."  # the token-classification head's tensors (score.weight, score.bias)
NOISE = 0.05  # relative Gaussian noise on the head: distinct weights, still a working tagger


@dataclass(frozen=True)
class Version:
    """A package to publish into the registry, and the label it gets there."""

    label: str
    package: Path


def ensure_package(state_dir: Path) -> tuple[Path, str]:
    """The soak's base package (trained once, then reused); (path, the command that made it)."""
    package = state_dir / "packages" / "soak-top2-causal"
    argv = [CLI, "train", "--state-dir", str(state_dir), *PACKAGE_ARGS, "--out", str(package)]
    if not (package / META).is_file():
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return package, shlex.join(["appliance", *argv[1:]])


def perturbed(package: Path, seed: int) -> Path:
    """A copy of `package` whose head is multiplied by (1 + NOISE * N(0, 1)), seeded, so the same
    seed gives the same bytes (and the same cached ONNX export) on every run."""
    target = package.with_name(f"{package.name}-head{seed}")
    if (target / META).is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(package, partial)
    tensors = load_file(str(partial / WEIGHTS))
    rng = np.random.default_rng(seed)
    for name in sorted(tensors):
        if name.startswith(HEAD):
            noise = rng.standard_normal(tensors[name].shape).astype(tensors[name].dtype)
            tensors[name] = tensors[name] * (1 + NOISE * noise)
    save_file(tensors, str(partial / WEIGHTS))
    meta = read_package_meta(partial)
    meta["weights"] = weights_record(partial)
    meta["derived"] = {"from": package.name, "head_noise": NOISE, "seed": seed}
    (partial / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    partial.rename(target)
    return target


def versions(state_dir: Path, swaps: int) -> tuple[list[Version], str]:
    """The first version and one per hot swap; and the command that trained the package."""
    package, command = ensure_package(state_dir)
    out = [Version("soak-base", package)]
    out += [Version(f"soak-head{k}", perturbed(package, k)) for k in range(1, swaps + 1)]
    return out, command


def prepare_exports(backend: str, state_dir: Path, all_versions: list[Version]) -> list[Path]:
    """Export every version now (cached by content key in <state_dir>/exports), so a swap or a
    restart during the soak only loads an ONNX file."""
    from serving.backends.onnx_export import ensure_export

    return [
        ensure_export(backend, v.package, read_package_meta(v.package), state_dir, None)
        for v in all_versions
    ]


def fresh_registry(root: Path, first: Version) -> ModelRegistry:
    """An empty registry at `root` with `first` published and promoted."""
    shutil.rmtree(root, ignore_errors=True)
    registry = ModelRegistry(root)
    slot = registry.publish(first.package, first.label, "soak: first version")
    registry.promote(slot.version, "soak: first version")
    return registry
