"""Credential hygiene, output file permissions and links, and nothing read is ever evaluated.

Credentials in a source URL (``rtsp://user:pass@host/...``, or ``?user=..&pwd=..``) never
reach the log, the JSONL, the HUD/statistics, error messages or progress output."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE_CLIP, probe_frames, run_cli, write_video
from reliability_helpers import (ENGINE_ONLY, FAST_NET, Child, check_complete_log, follow, frames,  # noqa: F401
                                 wait_for)
from streamcap.capture import SourceConfig, redact_url
from streamcap.pipeline import Pipeline

SECRET = "secretpw"


def _with_creds(url: str, creds: str = f"admin:{SECRET}") -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{creds}@{rest}"


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, text[max(0, text.find(SECRET) - 200): text.find(SECRET) + 50]


@pytest.mark.parametrize("uri,expected", [
    ("rtsp://user:secretpw@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
    ("rtsp://user:p@ss@secretpw@cam/x", "rtsp://***@cam/x"),  # a raw "@" in the password
    ("http://cam/video.cgi?user=admin&pwd=secretpw", "http://cam/video.cgi?user=***&pwd=***"),
    ("error at rtsp://u:secretpw@h/x: timeout", "error at rtsp://***@h/x: timeout"),
    ("rtsp://cam/x", "rtsp://cam/x"),
    ("/media/a@b/clip.mp4", "/media/a@b/clip.mp4"),
    ("0", "0"),
])
def test_redact_url(uri, expected):
    assert redact_url(uri) == expected


@pytest.mark.slow
def test_live_with_credentials_leaks_nothing(tmp_path, rtsp_server):
    server = rtsp_server(size=(160, 120)).start()
    url = _with_creds(server.url)
    log, out = tmp_path / "log.jsonl", tmp_path / "out.mp4"
    child = Child(tmp_path, "live", "--source", url, *FAST_NET, *ENGINE_ONLY, "--log", str(log), "--out", str(out),
                  "--stats", "--hud", "--verbose", "--stats-interval", "1", "--duration", "6")
    assert child.wait(timeout=60) == 0, child.stderr
    records = check_complete_log(log)
    assert len(frames(records)) > 5  # it did read through the credentialed URL
    assert {r["source"] for r in frames(records)} == {redact_url(url)}
    assert any(r["event"] == "stats" for r in records)
    _assert_no_secret(child.stdout, child.stderr, log.read_text())
    assert probe_frames(out) > 5


@pytest.mark.slow
def test_monitor_and_failing_cameras_with_credentials_leak_nothing(tmp_path, rtsp_server):
    server = rtsp_server(size=(160, 120)).start()
    good = _with_creds(server.url)
    dead = f"rtsp://admin:{SECRET}@127.0.0.1:9/cam"
    cgi = f"http://127.0.0.1:9/video.cgi?user=admin&pwd={SECRET}"
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "monitor", good, dead, cgi, *FAST_NET, *ENGINE_ONLY, "--log", str(log), "--verbose",
                  "--stats", "--max-retries", "1", "--duration", "6")
    assert child.wait(timeout=60) == 0, child.stderr
    records = check_complete_log(log)
    assert any(r.get("status") == "gave_up" for r in records)
    _assert_no_secret(child.stdout, child.stderr, log.read_text())
    # every camera never connecting: the error line names them, without credentials
    child = Child(tmp_path, "monitor", dead, cgi, "--max-retries", "0", "--open-timeout", "1", *ENGINE_ONLY,
                  "--log", str(log), "--verbose", name="dead")
    assert child.wait(timeout=60) == 3
    assert "never connected" in child.stderr and "rtsp://***@127.0.0.1:9/cam" in child.stderr
    _assert_no_secret(child.stdout, child.stderr, log.read_text())


def test_credentialed_url_given_to_file_and_live_errors_leak_nothing(tmp_path):
    url = f"rtsp://admin:{SECRET}@127.0.0.1:9/cam"
    result = run_cli("file", url, *ENGINE_ONLY)
    assert result.returncode == 2 and "rtsp://***@127.0.0.1:9/cam" in result.stderr
    _assert_no_secret(result.stdout, result.stderr)
    log = tmp_path / "log.jsonl"
    result = run_cli("live", "--source", url, "--max-retries", "0", "--open-timeout", "1", "--log", str(log),
                     "--verbose", *ENGINE_ONLY)
    assert result.returncode == 3
    _assert_no_secret(result.stdout, result.stderr, log.read_text())
    run = check_complete_log(log)[0]
    assert run["event"] == "run" and "rtsp://***@127.0.0.1:9/cam" in run["argv"]


def test_statistics_and_hud_input_name_sources_without_credentials():
    url = f"rtsp://admin:{SECRET}@127.0.0.1:9/cam"
    p = Pipeline([SourceConfig(url, max_retries=0, open_timeout_s=1)])
    summary = p.run()
    assert summary.exit_code == 3
    p.tick()
    _assert_no_secret(repr(p.last_stats), repr(p.stats.snapshot()), repr(p._source_state), repr(summary),
                      " ".join(r.name for r in p.readers))


def test_an_error_quoting_a_url_is_redacted_in_the_log(tmp_path):
    from streamcap.sinks import JsonlSink

    log = tmp_path / "log.jsonl"
    with JsonlSink(log) as sink:
        sink.write("stage_error", message=f"cannot fetch rtsp://a:{SECRET}@cam/x", nested={"u": [f"http://h/?token={SECRET}"]})
    text = log.read_text()
    _assert_no_secret(text)
    assert "rtsp://***@cam/x" in text and "token=***" in text


# -- output files: permissions, links, existing files ----------------------------------------------

def test_outputs_follow_the_umask(tmp_path):
    src = write_video(tmp_path / "in.avi", n=3)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    child = Child(tmp_path, "file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY,
                  preexec_fn=lambda: os.umask(0o027))
    assert child.wait(timeout=60) == 0, child.stderr
    assert stat.S_IMODE(log.stat().st_mode) == 0o640  # created 0644, less the umask
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # created 0666, less the umask
    assert not out.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.mark.parametrize("option", ["--out", "--log"])
def test_symlinked_outputs_are_refused_even_dangling(tmp_path, option):
    src = write_video(tmp_path / "in.avi", n=3)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / ("link.mp4" if option == "--out" else "link.jsonl")
    link.symlink_to(victim)
    extra = ["--overwrite"] if option == "--out" else []
    result = run_cli("file", str(src), option, str(link), *extra, *ENGINE_ONLY)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert victim.read_text() == "keep me"
    dangling = tmp_path / ("dangling.mp4" if option == "--out" else "dangling.jsonl")
    dangling.symlink_to(tmp_path / "would_be_created")
    result = run_cli("file", str(src), option, str(dangling), *ENGINE_ONLY)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert not (tmp_path / "would_be_created").exists()


def test_log_opened_through_a_link_swapped_in_late_is_refused(tmp_path):
    # check_output_path runs first; O_NOFOLLOW still refuses a link put there in between.
    from streamcap.sinks import JsonlSink

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "log.jsonl"
    link.symlink_to(victim)
    from streamcap.errors import BadInputError

    with pytest.raises(BadInputError, match="symbolic link"):
        JsonlSink(link).open()
    assert victim.read_text() == "keep me"


def test_existing_log_is_appended_and_a_cut_last_line_repaired(tmp_path):
    src = write_video(tmp_path / "in.avi", n=3)
    log = tmp_path / "log.jsonl"
    log.write_text('{"schema":1,"event":"old"}\n{"schema":1,"event":"cut in the mid')
    result = run_cli("file", str(src), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    records = check_complete_log(log)
    assert records[0]["event"] == "old" and records[1]["event"] == "run" and records[-1]["event"] == "end"


def test_existing_video_needs_overwrite(tmp_path):
    src = write_video(tmp_path / "in.avi", n=3)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    result = run_cli("file", str(src), "--out", str(out), *ENGINE_ONLY)
    assert result.returncode == 2 and "--overwrite" in result.stderr and out.read_bytes() == b"precious"


# -- nothing read is evaluated ---------------------------------------------------------------------

UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill"}
# PyYAML reads alert rules and cameras.yaml: only its safe loader may be used (checked below, and
# by feeding both loaders a document that would run code under an unsafe one).
UNSAFE_YAML = {"load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all", "Loader", "FullLoader",
               "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader"}


def test_no_code_path_evaluates_data():
    """No eval/exec, no pickle-family loader, YAML only through its safe loader, torch.load only
    with weights_only=True, no shell=True."""
    problems = []
    for path in sorted((REPO / "streamcap").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(REPO)
        safe_loaders = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                        and any(getattr(b, "attr", "") == "SafeLoader" for b in n.bases)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "yaml" and node.attr in UNSAFE_YAML:
                problems.append(f"{where}:{node.lineno} uses yaml.{node.attr}")
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load"
                    and getattr(node.func.value, "id", "") == "yaml"):
                loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
                name = getattr(loader, "id", None) or getattr(loader, "attr", None)
                if name not in ("SafeLoader", "CSafeLoader") and name not in safe_loaders:
                    problems.append(f"{where}:{node.lineno} yaml.load without a safe loader")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in UNSAFE_MODULES:
                        problems.append(f"{where}:{node.lineno} imports {name}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if isinstance(func, ast.Name) and name in UNSAFE_CALLS:
                problems.append(f"{where}:{node.lineno} calls {name}()")
            if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not safe:
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            for k in node.keywords:
                if k.arg == "shell" and getattr(k.value, "value", None) is True:
                    problems.append(f"{where}:{node.lineno} shell=True")
            if name == "system" and getattr(func.value, "id", "") == "os":
                problems.append(f"{where}:{node.lineno} os.system")
    assert not problems, problems
    assert not list((REPO / "streamcap").rglob("*.yaml")) and not list((REPO / "streamcap").rglob("*.toml"))


def test_yaml_files_cannot_run_code(tmp_path):
    """Alert rules and cameras.yaml with a tag that makes an unsafe YAML loader call a function:
    one clear error, and the function never runs."""
    from streamcap.alerts.rules import load_rules
    from streamcap.cluster.config import load
    from streamcap.errors import BadInputError

    marker = tmp_path / "ran"
    evil = f"!!python/object/apply:os.system ['touch {marker}']"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"rules:\n  - object: {evil}\n")
    cams = tmp_path / "cameras.yaml"
    cams.write_text(f"cameras:\n  - name: {evil}\n    url: rtsp://127.0.0.1:9/x\n")
    for fn, path in ((load_rules, rules), (load, cams)):
        with pytest.raises(BadInputError) as err:
            fn(path)
        assert "\n" not in str(err.value)
    assert not marker.exists()
