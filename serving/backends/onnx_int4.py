"""`onnx-int4`: the package exported to ONNX with 4-bit weights, run by ONNX Runtime on CPU.

The export (see `onnx_export`, recipe `onnx-int4`) happens once per package in a subprocess and is
cached under the state dir; this process loads only the tokenizer and an ONNX Runtime session, so
it never imports torch (see `serving.backends.keep_torch_out`). `onnx_int8` reuses this class with
another recipe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from appliance.encoding import EncodedWindow, pad_windows
from appliance.package_meta import read_package_meta
from serving.backends.base import Backend, BackendError, BackendOptions
from serving.backends.onnx_export import (
    INFO_FILE,
    MODEL_FILE,
    TOKENIZER_DIR,
    ensure_export,
)


class OnnxInt4Backend(Backend):
    name = "onnx-int4"
    quantization = "int4"

    def __init__(self, package_path: Path, options: BackendOptions) -> None:
        super().__init__(package_path, options)
        self._meta = read_package_meta(package_path)
        self.export_dir = ensure_export(
            self.name,
            package_path,
            self._meta,
            options.state_dir,
            options.base,
            turn=options.work_turn,
        )
        try:
            info = json.loads((self.export_dir / INFO_FILE).read_text(encoding="utf-8"))
            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(
                str(self.export_dir / TOKENIZER_DIR), local_files_only=True
            )
            self.session = ort.InferenceSession(
                str(self.export_dir / MODEL_FILE),
                self._session_options(options.threads, options.release_memory),
                providers=["CPUExecutionProvider"],
            )
        except (OSError, ValueError, RuntimeError) as err:  # ORT raises its own RuntimeErrors
            raise BackendError(f"{self.export_dir}: cannot load the ONNX export: {err}") from err
        self._run_options = ort.RunOptions()
        self._labels = tuple(info["labels"])
        self._pad_id = int(info["pad_id"])
        if list(self._labels) != self._meta.get("labels"):
            raise BackendError(f"{self.export_dir}: labels differ from the package's")

    @staticmethod
    def _session_options(threads: int, release_memory: bool) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without ONNX Runtime's own arena, a run's tensors are allocated from the process heap
        # and freed when the run ends, so the allocator returns them to the OS.
        options.enable_cpu_mem_arena = not release_memory
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return options

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def log_probs(self, windows: Sequence[EncodedWindow]) -> list[np.ndarray]:
        ids, mask, _ = pad_windows(windows, self._pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask}
        (out,) = self.session.run(["log_probs"], feeds, self._run_options)
        return [out[row, [w.word_token[j] for j in w.core_words]] for row, w in enumerate(windows)]

    def close(self) -> None:
        del self.session
