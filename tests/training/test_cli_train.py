"""The training commands register on a typer app without importing torch."""

import sys

import pytest

typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from workzone.cli.train import register  # noqa: E402


def test_register_adds_one_train_group_and_help_runs() -> None:
    app = typer.Typer()
    register(app)
    top = CliRunner().invoke(app, ["--help"])
    assert top.exit_code == 0 and "train" in top.output
    commands = typer.main.get_command(app).commands
    assert not commands["train"].hidden
    for alias in ("loso", "loso-fusion", "export-classifier", "compact-data", "train-detector", "eval-detector"):
        assert commands[alias].hidden  # old names stay as hidden aliases
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for name in ("classifier", "loso", "loso-fusion", "export-classifier", "compact-data", "detector", "eval-detector"):
        assert name in result.output


@pytest.mark.parametrize("argv", [["train", "classifier", "--help"], ["train", "MANIFEST.csv", "--help"],
                                  ["train", "compact-data", "--help"], ["compact-data", "--help"],
                                  ["train-detector", "--help"], ["train", "detector", "--help"]])
def test_old_and_new_command_names_reach_the_same_commands(argv) -> None:  # noqa: ANN001
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_compact_data_writes_a_small_copy(tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((400, 800, 3), np.uint8)).save(src / "images" / "a.jpg")
    (src / "manifest.csv").write_text("path,label,split,source\nimages/a.jpg,0,train,CamVid\n")
    (src / "boxes.csv").write_text("path,class,cx,cy,w,h\n")
    app = typer.Typer()
    register(app)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "compact-data", str(src / "manifest.csv"), "--out", str(out), "--max-side", "200"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "images" / "a.jpg") as im:
        assert im.size == (200, 100)
    assert (out / "boxes.csv").exists()


def test_importing_the_cli_module_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, workzone.cli.train, workzone.training.loso; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--classifier", "CamVid", "--detector", "CamVid=builtin"], "expected SOURCE=PATH"),
     (["--classifier", "CamVid=/no/such.pt", "--detector", "CamVid=builtin"], "no such file")],
)
def test_loso_fusion_rejects_bad_source_paths(tmp_path, args: list, message: str) -> None:  # noqa: ANN001
    app = typer.Typer()
    register(app)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split,source\n")
    result = CliRunner().invoke(app, ["loso-fusion", str(manifest), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_loso_fusion_needs_a_detector_for_every_classifier(tmp_path) -> None:  # noqa: ANN001
    from workzone.errors import ConfigError
    from workzone.training.loso_fusion import run_loso_fusion

    with pytest.raises(ConfigError, match="--detector: none given for \\['CamVid'\\]"):
        run_loso_fusion(tmp_path / "manifest.csv", {"CamVid": [tmp_path / "a.pt"]}, {})
