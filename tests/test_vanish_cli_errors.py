"""Issue 13, item 6: operator mistakes end in one clear line (English and Chinese), no traceback,
and change nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import run_cli


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_devices_import_of_binary_and_non_text_files(data_dir: Path, tmp_path: Path) -> None:
    dd = ["--data-dir", str(data_dir)]
    binary = tmp_path / "photo.csv"
    binary.write_bytes(random.Random(6).randbytes(4096))
    _one_line_error(run_cli("devices", "import", str(binary), *dd), "photo.csv", "不是")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,kind,admin_code\nrg-1,rain_gauge,420102001001\n\xff\xfe\xff,rain_gauge,420102001002\n")
    _one_line_error(run_cli("devices", "import", str(latin), *dd), "latin.csv", "UTF-8")
    listed = json.loads(run_cli("devices", "list", "--json", *dd, check=True).stdout)
    assert listed == []  # nothing imported from a refused file


def test_devices_import_of_a_gbk_csv(data_dir: Path, tmp_path: Path) -> None:
    """What a Chinese Excel saves: GBK, not UTF-8. It imports as it reads."""
    dd = ["--data-dir", str(data_dir)]
    gbk = tmp_path / "excel.csv"
    gbk.write_bytes("id,kind,admin_code,unit\nrg-7,rain_gauge,420102001001,县应急局\n".encode("gbk"))
    run_cli("devices", "import", str(gbk), *dd, check=True)
    shown = json.loads(run_cli("devices", "show", "rg-7", "--json", *dd, check=True).stdout)
    assert shown["unit"] == "县应急局"


def test_broker_config_to_an_unwritable_place(tmp_path: Path) -> None:
    _one_line_error(run_cli("provision", "broker-config", "--out", "/proc/x"), "/proc/x", "无法写入")
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    _one_line_error(run_cli("provision", "broker-config", "--out", str(a_file / "broker")), "not-a-dir")
