"""`workzone train` lists the lab's commands (registered by entry point) without importing torch."""

import subprocess
import sys

import pytest

typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from workzone.cli.main import app, train_group  # noqa: E402

#: Every training command, the object detector's included; `workzone train --help` must list them all.
TRAIN_COMMANDS = ("classifier", "export-classifier", "compact-data", "loso", "loso-fusion", "detector",
                  "eval-detector", "objects-fold", "objects-loso", "objects-pack", "objects-oof", "loso-scores", "loso-table",
                  "anomaly-bank")


def test_workzone_train_help_lists_every_command_of_the_lab() -> None:
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    missing = [name for name in TRAIN_COMMANDS if name not in result.output]
    assert not missing, result.output


@pytest.mark.parametrize("name", ["classifier", "compact-data", "detector", "loso-scores", "anomaly-bank"])
def test_each_train_command_answers_help(name: str) -> None:
    result = CliRunner().invoke(app, ["train", name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_object_detector_commands_hand_their_arguments_to_its_own_parser() -> None:
    # argparse of workzone_train.object_train answers --help (it exits 0 and names its own options).
    result = subprocess.run([sys.executable, "-m", "workzone.cli.main", "train", "objects-pack", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--run" in result.stdout and "--out" in result.stdout


def test_without_the_lab_train_says_how_to_install_it() -> None:
    no_lab = typer.Typer()
    no_lab.command("detect")(lambda: None)
    no_lab.add_typer(train_group("workzone.no-such-group"), name="train")
    result = CliRunner().invoke(no_lab, ["train"])
    assert result.exit_code != 0
    assert "pip install -e ./lab" in str(result.exception)


def test_compact_data_writes_a_small_copy(tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((400, 800, 3), np.uint8)).save(src / "images" / "a.jpg")
    (src / "manifest.csv").write_text("path,label,split,source\nimages/a.jpg,0,train,CamVid\n")
    (src / "boxes.csv").write_text("path,class,cx,cy,w,h\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "compact-data", str(src / "manifest.csv"), "--out", str(out), "--max-side", "200"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "images" / "a.jpg") as im:
        assert im.size == (200, 100)
    assert (out / "boxes.csv").exists()


def test_importing_the_cli_module_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, workzone.cli.main, workzone_train.loso; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--classifier", "CamVid", "--detector", "CamVid=builtin"], "expected SOURCE=PATH"),
     (["--classifier", "CamVid=/no/such.pt", "--detector", "CamVid=builtin"], "no such file")],
)
def test_loso_fusion_rejects_bad_source_paths(tmp_path, args: list, message: str) -> None:  # noqa: ANN001
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split,source\n")
    result = CliRunner().invoke(app, ["train", "loso-fusion", str(manifest), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_loso_fusion_needs_a_detector_for_every_classifier(tmp_path) -> None:  # noqa: ANN001
    from workzone.errors import ConfigError
    from workzone_train.loso_fusion import run_loso_fusion

    with pytest.raises(ConfigError, match="--detector: none given for \\['CamVid'\\]"):
        run_loso_fusion(tmp_path / "manifest.csv", {"CamVid": [tmp_path / "a.pt"]}, {})
