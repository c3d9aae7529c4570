import subprocess
import sys

from typer.testing import CliRunner

from ollamamax.cli import _register, app
from ollamamax.models.store import ModelStore
from ollamamax.testing.tiny_gguf import write_tiny_gguf

_register()
runner = CliRunner()


def test_import_then_list(tmp_path):
    gguf = write_tiny_gguf(tmp_path / "t.gguf")
    store_dir = tmp_path / "store"
    result = runner.invoke(app, ["models", "import", str(gguf), "--name", "tiny:v2",
                                 "--models-dir", str(store_dir)])
    assert result.exit_code == 0, result.output
    assert "imported tiny:v2" in result.output
    assert [m.name.short for m in ModelStore(store_dir).list()] == ["tiny:v2"]
    listed = runner.invoke(app, ["models", "list", "--models-dir", str(store_dir)])
    assert listed.exit_code == 0 and "tiny:v2" in listed.output


def test_import_refuses_a_file_that_is_not_gguf_with_a_sentence(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    result = subprocess.run([sys.executable, "-m", "ollamamax", "models", "import", str(bad),
                             "--name", "x", "--models-dir", str(tmp_path / "s")],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error:" in result.stderr and "not a valid GGUF" in result.stderr
    assert "Traceback" not in result.stderr
