"""The `photogenic` command line, as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from photogenic.cli import main
from photogenic.config import load_config
from photogenic.storage import open_store


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "config" in result.output and "store" in result.output


def test_config_show_prints_the_resolved_yaml_and_fingerprint() -> None:
    result = run("config", "show", "--preset", "tiny", "world.seed=7")
    assert result.exit_code == 0, result.output
    body, _, tail = result.output.rpartition("# fingerprint: ")
    data = yaml.safe_load(body)
    assert data["preset"] == "tiny" and data["world"]["seed"] == 7
    assert tail.strip() == load_config("tiny", overrides=["world.seed=7"]).fingerprint()


def test_config_show_docs_and_presets() -> None:
    docs = run("config", "show", "--docs")
    assert "train.quality_tune.noise_offset = 0.1" in docs.output
    assert "Noise offset of the diffusion loss" in docs.output
    presets = run("config", "presets")
    assert "tiny" in presets.output and "demo" in presets.output


def test_bad_config_exits_with_one_clear_line() -> None:
    result = CliRunner().invoke(main, ["config", "show", "train.lerning_rate=1"])
    assert result.exit_code == 1
    assert "Error: unknown config key 'train.lerning_rate'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["config", "show", "--preset", "huge"])
    assert result.exit_code == 1 and "unknown preset 'huge'" in result.output


def test_store_commands_on_a_local_store(tmp_path: Path) -> None:
    src = tmp_path / "hello.txt"
    src.write_text("hello\n")
    root = tmp_path / "store"
    put = run("store", "put", str(src), f"{root}/a/hello.txt")
    assert put.exit_code == 0 and "sha256" in put.output
    listing = run("store", "ls", "-l", str(root))
    assert f"{root}/a/hello.txt" in listing.output
    assert "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03" in listing.output
    assert run("store", "cat", f"{root}/a/hello.txt").output == "hello\n"
    got = run("store", "get", f"{root}/a/hello.txt", str(tmp_path / "copy.txt"))
    assert got.exit_code == 0 and (tmp_path / "copy.txt").read_text() == "hello\n"
    missing = CliRunner().invoke(main, ["store", "cat", f"{root}/nope.txt"])
    assert missing.exit_code == 1 and "no object at" in missing.output


def test_store_ls_on_s3(s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/runs")
    store.put_bytes("x/1.bin", b"1")
    store.put_bytes("x/2.bin", b"22")
    result = run("store", "ls", "-l", f"s3://{s3_bucket}/runs")
    assert result.exit_code == 0, result.output
    assert f"s3://{s3_bucket}/runs/x/1.bin" in result.output
    assert f"s3://{s3_bucket}/runs/x/2.bin" in result.output


def test_store_ls_on_a_missing_bucket_is_one_clear_line(s3_env: object) -> None:
    result = CliRunner().invoke(main, ["store", "ls", "s3://no-such-bucket-zz"])
    assert result.exit_code == 1
    assert "bucket 'no-such-bucket-zz' does not exist" in result.output


@pytest.mark.parametrize("argv", [["photogenic"], [sys.executable, "-m", "photogenic"]])
def test_installed_entry_points(argv: list[str]) -> None:
    photogenic = Path(sys.executable).with_name("photogenic")
    cmd = [str(photogenic)] if argv == ["photogenic"] else argv
    out = subprocess.run([*cmd, "config", "show", "--preset", "tiny"], capture_output=True, text=True, check=True)
    assert "preset: tiny" in out.stdout
