"""The README's export, deploy and fleet commands, as written, run from a working directory with relative paths.

Only what names the reader's world is replaced (device URIs, the SuperLink's address and port), and the sizes that
make them long (resolution, rounds, steps); every path stays as the README writes it, relative. Each replacement
must find its text, so a README that changes its commands fails here until the test follows."""

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main

from .conftest import make_image_folder
from .devicefixtures import free_port
from .exportutil import PATTERN_CLASSES

pytest.importorskip("flwr")
pytest.importorskip("tensorflow")
README = Path(__file__).parents[1] / "README.md"


def readme_command(start: str) -> str:
    """The README's command line beginning with ``start`` (continuation lines joined, the comment dropped)."""
    text = README.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith(start):
            return re.sub(r"\s+", " ", line.split("  #")[0]).strip()
    raise AssertionError(f"the README has no command starting {start!r}")


def replaced(command: str, *pairs: tuple[str, str]) -> list[str]:
    for old, new in pairs:
        assert old in command, f"{old!r} is not in the README's {command!r}"
        command = command.replace(old, new)
    return command.split()[1:]  # without "edgetl"


def run(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, f"edgetl {' '.join(args)}:\n{result.output}"
    return result.output


@pytest.mark.slow  # trains, exports for TFLite, deploys, and runs a fleet of 3 devices for 2 rounds
def test_readme_deploy_and_fleet_commands_with_relative_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    devices = tmp_path / "devices"  # the devices' own directories are theirs, not the reader's: absolute
    py = f"?python={sys.executable}"
    make_image_folder(work / "shard", classes=PATTERN_CLASSES, per_class=4, size=40)
    make_image_folder(work / "test", classes=PATTERN_CLASSES, per_class=3, size=40)  # held out: 15 images
    run(["train", "--data", "shard", "--resolution", "32", "--batch-size", "8", "--epochs", "1", "--weights", "none",
         "--no-progress", "--out", "runs/small"])
    assert (work / "runs" / "last").resolve() == work / "runs" / "small"
    run(replaced(readme_command("edgetl export runs/last --format tflite"), ("--batch-size 8", "--batch-size 4")))
    manifest = json.loads((work / "artifacts" / "tflite" / "manifest.json").read_text())
    assert manifest["source_run"] == str(work / "runs" / "small")  # recorded absolute, wherever it is read

    run(replaced(readme_command("edgetl deploy artifacts/tflite --device ssh://pi@raspberrypi.local --steps"),
                 ("ssh://pi@raspberrypi.local", f"local://{devices / 'pi'}{py}"), ("--steps 200", "--steps 2")))
    report = json.loads((work / "deploy" / "pi" / "report.json").read_text())
    assert len(report["losses"]) == 2 and report["data"]["train_images"] == 20

    run(replaced(readme_command("edgetl fleet shard patterns"), ("--resolution 224", "--resolution 32")))
    assert sorted(p.name for p in (work / "shards").glob("*.npz")) == ["device-1.npz", "device-2.npz", "device-3.npz"]
    port = free_port()
    output = run(replaced(readme_command("edgetl fleet run artifacts/tflite"),
                          *((f"ssh://pi@cam-{i}", f"local://{devices / f'cam-{i}'}{py}") for i in (1, 2, 3)),
                          ("--rounds 20", "--rounds 2"), ("--local-steps 50", "--local-steps 2"),
                          ("--host 0.0.0.0", "--host 127.0.0.1"), ("192.168.1.10:9092", f"127.0.0.1:{port}"),
                          ("--port 9092", f"--port {port}")))
    fleet = json.loads((work / "runs" / "fleet" / "fleet.json").read_text())
    assert [r["round"] for r in fleet["rounds"]] == [1, 2] and all(len(r["answered"]) == 3 for r in fleet["rounds"])
    # the held-out folder is evaluated whole, and the live table says on how many images
    assert fleet["initial_eval"]["eval_images"] == 15 and all(r["eval_images"] == 15 for r in fleet["rounds"])
    assert "on the 15 held-out images of" in output
    rows = [line.split() for line in output.splitlines() if re.match(r"\s+[12]\s+3/3", line)]
    assert len(rows) == 2 and all(row[4] == "15" for row in rows), output
    assert fleet["settings"]["eval_data"] == str(work / "test")
    assert (work / "runs" / "fleet" / "checkpoint.pt").is_file()
