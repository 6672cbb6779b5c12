"""Alerts from the command line: bad options are one line and exit 2 before anything runs;
a real `streamcap file` run with the bundled caption model puts alert records in the log, with
snapshots, and delivers them to a local webhook receiver and a real MQTT broker; no secret
reaches the log or the terminal."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO, SAMPLE_CLIP, read_jsonl, run_cli
from streamcap.alerts.rules import words_of
from streamcap.cli import app
from test_alerts_delivery import PASSWORD, Receiver, Subscriber, broker, free_port, needs_mosquitto, wait_for  # noqa: F401

runner = CliRunner()
NO_MODELS = ["--no-segment", "--no-caption"]


def one_line_error(res, code=2) -> str:
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def test_bad_rules_file_is_one_line_naming_the_line(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: door\n    object: person\n    cooldown: soon\n")
    line = one_line_error(runner.invoke(app, ["file", str(SAMPLE_CLIP), *NO_MODELS, "--alerts", str(rules)]))
    assert f"{rules}:4: rule 'door': 'cooldown' must be a number" in line


@pytest.mark.parametrize("args, message", [
    (["--mqtt-user", "u"], "--mqtt-user and --mqtt-password-file need --mqtt"),
    (["--webhook", "http://127.0.0.1:9/hook"], "--webhook sends alerts"),
    (["--alert-object", "person", "--webhook", "ftp://u:TOKEN9911@h/x"], "--webhook must be an http"),
    (["--mqtt", "h:notaport"], "--mqtt port must be 1-65535"),
    (["--mqtt", "h", "--mqtt-password-file", "/nonexistent/pw"], "--mqtt-password-file not found"),
    (["--alert-caption", "..."], "--alert-caption needs words"),
    (["--alerts", "/nonexistent/rules.yaml"], "alert rules file not found"),
])
def test_bad_options(args, message):
    line = one_line_error(runner.invoke(app, ["monitor", "rtsp://127.0.0.1:9/x", *NO_MODELS, *args]))
    assert message in line and "TOKEN9911" not in line


def expected_alerts(captions: list[dict], words: tuple[str, ...]) -> list[int]:
    """Cooldown 0: an alert at each caption record that starts a run of captions with the words."""
    out, active = [], False
    for c in captions:
        match = set(words) <= set(words_of(c["shown"] or ""))
        if match and not active:
            out.append(c["frame_index"])
        active = match
    return out


@needs_mosquitto
def test_file_run_alerts_into_the_log_webhook_and_mqtt(tmp_path, broker):  # noqa: F811
    log, events = tmp_path / "run.jsonl", tmp_path / "events"
    pw = tmp_path / "mqtt.pw"
    pw.write_text(PASSWORD + "\n")
    rx = Receiver()
    sub = Subscriber(broker)
    hook = f"http://hookuser:{PASSWORD}@127.0.0.1:{rx.port}/hook/TOKEN9911"
    try:
        res = runner.invoke(app, [
            "file", str(SAMPLE_CLIP), "--no-segment", "--log", str(log), "--events-dir", str(events),
            "--alert-caption", "a", "--alert-caption", "people", "--alert-cooldown", "0",
            "--webhook", hook, "--mqtt", f"127.0.0.1:{broker}", "--mqtt-user", "streamcap",
            "--mqtt-password-file", str(pw), "--stats-interval", "0.5"])
        assert res.exit_code == 0, res.output
        records = read_jsonl(log)
        captions = [r for r in records if r["event"] == "caption"]
        alerts = [r for r in records if r["event"] == "alert"]
        assert captions and alerts
        for rule, words in (("caption:a", ("a",)), ("caption:people", ("people",))):
            fired = [a for a in alerts if a["rule"] == rule]
            assert [a["frame_index"] for a in fired] == expected_alerts(captions, words)
        assert any(a["rule"] == "caption:a" for a in alerts)  # every bundled caption has an "a"
        for a in alerts:
            assert a["source"] == a["camera"] == "vtest_8s.mp4"
            assert a["matched"]["kind"] == "caption" and a["matched"]["caption"]
            image = cv2.imread(str(events / a["snapshot"]))
            assert image is not None and image.shape == (576, 768, 3)
        end = [r for r in records if r["event"] == "end"][-1]
        assert end["alerts"] == len(alerts) and set(end["deliveries"]) == {"webhook", "mqtt"}
        # the webhook got every alert, with its snapshot's bytes
        assert wait_for(lambda: len(rx.posts) == len(alerts))
        by_frame = {(p["body"]["rule"], p["body"]["frame_index"]): p for p in rx.posts}
        for a in alerts:
            body = by_frame[(a["rule"], a["frame_index"])]["body"]
            assert base64.b64decode(body["snapshot_jpeg"]) == (events / a["snapshot"]).read_bytes()
            assert cv2.imdecode(np.frombuffer(base64.b64decode(body["snapshot_jpeg"]), np.uint8), 1) is not None
        # MQTT: discovery for the camera, its captions and its alerts
        assert wait_for(lambda: len([m for m in sub.messages if m[0] == "streamcap/vtest_8s_mp4/alert"]) == len(alerts))
        topics = {t for t, _, _ in sub.messages}
        assert "homeassistant/binary_sensor/streamcap_vtest_8s_mp4/alert/config" in topics
        assert "homeassistant/sensor/streamcap_vtest_8s_mp4/caption/config" in topics
        assert "streamcap/vtest_8s_mp4/caption" in topics and "streamcap/vtest_8s_mp4/status" in topics
        sent = [json.loads(p) for t, p, _ in sub.messages if t == "streamcap/vtest_8s_mp4/alert"]
        assert sorted((m["rule"], m["frame_index"]) for m in sent) == sorted((a["rule"], a["frame_index"]) for a in alerts)
    finally:
        sub.close()
        rx.close()
    # the deliveries' figures at the end, and no secret anywhere
    assert "webhook http://127.0.0.1:" in res.output and "0 failed, 0 dropped" in res.output
    text = log.read_text() + res.output
    for secret in (PASSWORD, "TOKEN9911", "hookuser"):
        assert secret not in text


def test_dead_webhook_and_broker_do_not_hold_up_a_run(tmp_path):
    """Nothing listens: the run ends normally with every frame written, the deliveries are
    counted in the log, and the webhook's secrets are in neither the log (the run record's
    argv included) nor the terminal. A real process, so that the argv is streamcap's own."""
    log = tmp_path / "run.jsonl"
    port = free_port()
    hook = f"http://hookuser:{PASSWORD}@127.0.0.1:{port}/hook/TOKEN9911?key=QK55"
    res = run_cli("file", str(SAMPLE_CLIP), "--no-segment", "--no-caption", "--log", str(log),
                  "--webhook", hook, "--mqtt", f"127.0.0.1:{free_port()}", "--alerts", str(_rules(tmp_path)),
                  "--verbose", env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    records = read_jsonl(log)
    end = [r for r in records if r["event"] == "end"][-1]
    assert end["written"] == 80
    assert set(end["deliveries"]) == {"webhook", "mqtt"}
    run = [r for r in records if r["event"] == "run"][-1]
    assert f"http://127.0.0.1:{port}/..." in run["argv"]
    assert f"streamcap: 0 alerts; webhook http://127.0.0.1:{port}/...: 0 sent" in res.stderr
    text = log.read_text() + res.stdout + res.stderr
    for secret in (PASSWORD, "TOKEN9911", "QK55", "hookuser"):
        assert secret not in text


def _rules(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text("rules:\n  - name: person\n    object: person\n")
    return p
