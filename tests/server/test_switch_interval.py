"""The server's GIL switch interval: short on a CUDA device (its compute thread waits for the GIL at every
operator it dispatches while the event loop handles requests), Python's own on the CPU, put back at stop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server_support import write_pipeline
from workzone.server.settings import ServerSettings


def test_the_default_is_short_on_a_cuda_device_only() -> None:
    assert ServerSettings(device="cuda").switch_interval_s == pytest.approx(0.0005)
    assert ServerSettings(device="cuda:1").switch_interval_s == pytest.approx(0.0005)
    assert ServerSettings(device="cpu").switch_interval_s is None
    assert ServerSettings(device="cpu", gil_switch_ms=2).switch_interval_s == pytest.approx(0.002)
    assert ServerSettings(device="cuda", gil_switch_ms=5).switch_interval_s == pytest.approx(0.005)


@pytest.mark.parametrize("bad", [0, -1, 1000])
def test_a_bad_interval_is_refused_by_name(bad: float) -> None:
    with pytest.raises(ValidationError, match="gil_switch_ms"):
        ServerSettings(gil_switch_ms=bad)


def test_a_server_sets_the_interval_while_it_runs_and_puts_it_back(live_server: Any, model_dir: Path) -> None:
    before = sys.getswitchinterval()
    assert before != pytest.approx(0.00025)
    srv = live_server(pipeline=str(write_pipeline(model_dir, "gil")), gil_switch_ms=0.25)
    assert sys.getswitchinterval() == pytest.approx(0.00025)
    srv.stop()
    assert not srv.thread.is_alive()
    assert sys.getswitchinterval() == pytest.approx(before)


def test_a_cpu_server_leaves_pythons_interval(live_server: Any, model_dir: Path) -> None:
    before = sys.getswitchinterval()
    srv = live_server(pipeline=str(write_pipeline(model_dir, "gil-cpu")))
    assert srv.settings.switch_interval_s is None
    assert sys.getswitchinterval() == pytest.approx(before)
