"""`appliance` CLI end to end on a tiny corpus, with exit codes and messages for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, main
from tests.appliance.corpus import write_jsonl


@pytest.fixture(scope="module")
def trained(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    train = write_jsonl(root / "train.jsonl", 160, seed=1)
    dev = write_jsonl(root / "dev.jsonl", 40, seed=2)
    config = root / "appliance.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\n[model]\nbase = "{tiny_llama}"\n'
        "[train]\nepochs = 4\nbatch_size = 8\nlearning_rate = 3e-3\nhead_learning_rate = 1e-2\n"
    )
    code = main(
        [
            "train",
            "--config",
            str(config),
            "--train",
            str(train),
            "--dev",
            str(dev),
            "--layers",
            "top:2",
            "--out",
            str(root / "pkg"),
            "--no-progress",
        ]
    )
    assert code == 0
    return {"root": root, "config": config, "pkg": root / "pkg", "dev": dev}


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, object, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 and out.strip() else None, err


def test_train_then_evaluate(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]):
    code, result, _ = _run(
        capsys,
        [
            "evaluate",
            "--config",
            str(trained["config"]),
            "--package",
            str(trained["pkg"]),
            "--data",
            str(trained["dev"]),
        ],
    )
    assert code == 0
    assert result["notes"] == 40
    assert result["entity_strict"]["overall"]["f1"] > 0.8
    assert set(result["span_exact"]) >= {"overall", "Chemical", "Disease"}


def test_annotate_text_and_file(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]):
    text = "the patient was given aspirin and developed fever ."
    code, entities, _ = _run(
        capsys,
        [
            "annotate",
            "--config",
            str(trained["config"]),
            "--package",
            str(trained["pkg"]),
            "--text",
            text,
        ],
    )
    assert code == 0
    assert {(e["text"], e["label"]) for e in entities} == {
        ("aspirin", "Chemical"),
        ("fever", "Disease"),
    }
    for e in entities:
        assert text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1
    note = trained["root"] / "note.txt"
    note.write_text("Café patient 😀 was given lithium and had seizures .", encoding="utf-8")
    code, entities, _ = _run(
        capsys,
        [
            "annotate",
            "--config",
            str(trained["config"]),
            "--package",
            str(trained["pkg"]),
            "--file",
            str(note),
        ],
    )
    body = note.read_text(encoding="utf-8")
    assert code == 0 and all(body[e["start"] : e["end"]] == e["text"] for e in entities)
    assert ("lithium", "Chemical") in {(e["text"], e["label"]) for e in entities}


def test_info_on_package_and_base(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]):
    code, info, _ = _run(capsys, ["info", "--package", str(trained["pkg"])])
    assert code == 0
    assert info["layers"] == {"spec": "top:2", "indices": [2, 3]}
    assert info["training"]["data"]["train"]["notes"] == 160
    code, info, _ = _run(capsys, ["info", "--config", str(trained["config"]), "--layers", "top:1"])
    assert code == 0 and info["layers"] == 4 and info["selection"]["layers"] == [3]
    code, info, _ = _run(capsys, ["info", "--config", str(trained["config"])])  # layers: auto
    assert code == 0 and info["selection"]["spec"] == "all"  # 4 layers: no more than 16


def test_bad_input_file_names_file_and_line(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
):
    bad = trained["root"] / "bad.jsonl"
    lines = trained["dev"].read_text().splitlines()[:3]
    lines.insert(
        1,
        json.dumps({"text": "aspirin", "entities": [{"start": 0, "end": 99, "label": "Chemical"}]}),
    )
    bad.write_text("\n".join(lines) + "\n")
    argv = [
        "evaluate",
        "--config",
        str(trained["config"]),
        "--package",
        str(trained["pkg"]),
        "--data",
        str(bad),
    ]
    code, _, err = _run(capsys, argv)
    assert code == EXIT_INPUT
    assert f"{bad}:2:" in err and "aspirin" not in err and "Traceback" not in err
    code, result, err = _run(capsys, [*argv, "--skip-bad"])
    assert code == 0 and result["notes"] == 3
    assert f"{bad}:2: skipped" in err


def test_errors_have_exit_codes_and_messages(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    code, _, err = _run(capsys, ["annotate", "--package", str(tmp_path), "--text", "x"])
    assert code == EXIT_MODEL and "not a model package" in err
    code, _, err = _run(
        capsys,
        [
            "train",
            "--config",
            str(trained["config"]),
            "--train",
            str(trained["dev"]),
            "--layers",
            "top:99",
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
        ],
    )
    assert code == EXIT_USAGE and "'top:99'" in err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    code, _, err = _run(
        capsys,
        [
            "annotate",
            "--config",
            str(trained["config"]),
            "--package",
            str(trained["pkg"]),
            "--file",
            str(latin1),
        ],
    )
    assert code == EXIT_INPUT and f"{latin1}:2: not valid UTF-8" in err
    code, _, err = _run(
        capsys,
        [
            "annotate",
            "--config",
            str(trained["config"]),
            "--package",
            str(trained["pkg"]),
            "--text",
            "   ",
        ],
    )
    assert code == EXIT_INPUT and "empty" in err
    with pytest.raises(SystemExit) as usage:
        main(["train"])
    assert usage.value.code == EXIT_USAGE


def test_train_on_several_files_with_a_held_out_dev_split(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
):
    root = trained["root"]
    argv = [
        "train",
        "--config",
        str(trained["config"]),
        "--train",
        str(root / "train.jsonl"),
        str(trained["dev"]),
        "--dev-split",
        "30",
        "--layers",
        "head",
        "--epochs",
        "1",
        "--out",
        str(root / "pkg-split"),
        "--no-progress",
    ]
    code, result, _ = _run(capsys, argv)
    assert code == 0 and result["epochs_run"] == 1
    code, info, _ = _run(capsys, ["info", "--package", str(root / "pkg-split")])
    data = info["training"]["data"]
    assert data["train"]["notes"] == 170 and data["dev"]["notes"] == 30
    assert data["dev"]["split_from_train"] == 30
    code, _, err = _run(capsys, [*argv[:-3], "--dev-split", "999", "--out", str(root / "x")])
    assert code == EXIT_USAGE and "--dev-split 999: need 0 < N < 200" in err


def test_train_resumes_from_its_checkpoint_and_removes_it_once_packaged(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    import torch

    root = trained["root"]
    checkpoint = tmp_path / "train.pt"
    argv = ["train", "--config", str(trained["config"]), "--train", str(root / "train.jsonl"),
            "--layers", "top:2", "--no-progress", "--checkpoint", str(checkpoint)]  # fmt: skip
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    code, _, err = _run(capsys, [*argv, "--epochs", "1", "--out", str(blocked / "pkg")])
    assert code == EXIT_USAGE and checkpoint.exists()  # trained, but no package written
    assert "file/pkg: cannot write the package (Not a directory)" in err
    assert f"the training is kept in {checkpoint}" in err
    saved = torch.load(checkpoint, weights_only=True)["result"]["history"]
    code, _, err = _run(capsys, [*argv, "--epochs", "2", "--out", str(tmp_path / "pkg")])
    assert code == 0 and not checkpoint.exists(), err
    meta = json.loads((tmp_path / "pkg" / "package.json").read_text())
    history = meta["training"]["result"]["history"]
    assert len(history) == 2
    assert {k: history[0][k] for k in saved[0]} == saved[0]  # epoch 1 resumed, not retrained
