"""`ollamamax models list PATTERN`, `rm` and `verify` on a real store."""

from typer.testing import CliRunner

from ollamamax.cli import _register, app
from ollamamax.models.store import ModelStore
from ollamamax.testing.tiny_gguf import import_tiny_model

_register()
runner = CliRunner()


def _names(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines()[1:] if line.strip()]


def _store(tmp_path, *names):
    for name in names:
        import_tiny_model(tmp_path / "store", name=name)
    return ModelStore(tmp_path / "store")


def test_list_filters_by_glob_or_prefix(tmp_path):
    store = _store(tmp_path, "llama3:8b", "llama3.2:1b", "qwen2:7b")
    where = ["--models-dir", str(store.root)]
    assert _names(runner.invoke(app, ["models", "list", *where]).output) == [
        "llama3.2:1b", "llama3:8b", "qwen2:7b"]
    assert _names(runner.invoke(app, ["models", "list", "llama3*", *where]).output) == [
        "llama3.2:1b", "llama3:8b"]
    assert _names(runner.invoke(app, ["models", "list", "*:7b", *where]).output) == ["qwen2:7b"]
    assert _names(runner.invoke(app, ["models", "list", "LLAMA3:", *where]).output) == ["llama3:8b"]
    assert _names(runner.invoke(app, ["models", "list", "mistral*", *where]).output) == []


def test_rm_keeps_blobs_another_model_uses(tmp_path):
    store = _store(tmp_path, "a:1", "b:1")  # the same tiny weights: shared blobs
    where = ["--models-dir", str(store.root)]
    result = runner.invoke(app, ["models", "rm", "a:1", *where])
    assert result.exit_code == 0 and "deleted 'a:1' (0 blobs freed)" in result.output
    assert runner.invoke(app, ["models", "verify", "b:1", *where]).exit_code == 0
    result = runner.invoke(app, ["models", "rm", "b:1", *where])
    assert "deleted 'b:1' (2 blobs freed)" in result.output
    assert store.list() == [] and store.local_blobs() == []
    assert runner.invoke(app, ["models", "rm", "b:1", *where]).exit_code != 0


def test_verify_reports_a_corrupt_blob_and_fails(tmp_path):
    store = _store(tmp_path, "a:1")
    where = ["--models-dir", str(store.root)]
    ok = runner.invoke(app, ["models", "verify", *where])
    assert ok.exit_code == 0 and "ok" in ok.output
    path = store.model_file(store.get("a:1"))
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    bad = runner.invoke(app, ["models", "verify", "a:1", *where])
    assert bad.exit_code == 1
    assert "corrupt" in bad.output and path.name.removeprefix("sha256-")[:12] in bad.output
