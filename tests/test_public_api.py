import subprocess
import sys

import workzone


def test_all_is_pinned():
    assert sorted(workzone.__all__) == sorted([
        "BackendUnavailable", "Box", "Cascade", "ConfigError", "DataError", "DeadlineExceeded", "Decision",
        "Evidence", "FrameRef", "Image", "ImageLimits", "InvalidImageError", "MissingExtraError", "ModelFileError",
        "Pipeline", "Stage", "StageContext", "StageError", "StageOutput", "StageParams", "StageReport",
        "TextRead", "TierEvent", "UnknownStageKind", "WorkzoneError", "create_stage", "decode_image",
        "list_stages", "load_pipeline", "load_pipeline_config", "parse_pipeline", "public_answer", "register_stage",
        "__version__",
    ])
    for name in workzone.__all__:
        assert hasattr(workzone, name), name


def test_every_error_is_a_workzone_error():
    from workzone import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.WorkzoneError)
    assert issubclass(errors.MissingExtraError, ImportError)


def test_importing_workzone_and_stages_pulls_in_no_heavy_dependency():
    code = ("import sys, workzone, workzone.stages, workzone.cli.main; "
            "heavy = {'torch', 'onnxruntime', 'openai', 'fastapi', 'transformers', 'cv2', 'ultralytics', 'bittensor'}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_missing_extra_names_the_pip_command():
    from workzone._optional import require
    from workzone.errors import MissingExtraError

    try:
        require("surely_not_installed_pkg", "vlm", "the VLM stage")
    except MissingExtraError as exc:
        assert "pip install 'workzone[vlm]'" in str(exc)
    else:
        raise AssertionError("expected MissingExtraError")
