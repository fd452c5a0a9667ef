from tests.conftest import run_cli


def test_version() -> None:
    proc = run_cli("--version", check=True)
    assert "fieldhub, version" in proc.stdout
