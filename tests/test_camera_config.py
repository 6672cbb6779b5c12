"""cameras.yaml: validation with one-line errors naming camera and field, url_env, credentials
never shown, per-camera options reaching the engine, and `monitor --config` without Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from streamcap.cluster.config import load, parse
from streamcap.errors import BadInputError


def _load(tmp_path, text, env=None):
    path = tmp_path / "cameras.yaml"
    path.write_text(textwrap.dedent(text))
    return load(path, env=env or {})


def test_full_config_groups_options_resources(tmp_path):
    cfg = _load(tmp_path, """
        defaults: {no-caption: true, rtsp-transport: udp}
        groups:
          gpu-a: {num_gpus: 1, num_cpus: 2, resources: {site-b: 1}, max_restarts: 3}
        cameras:
          - name: door
            url: rtsp://admin:secret@10.0.0.5/stream
            group: gpu-a
            options: {seg-every: 4, caption-interval: 5, stride: 2}
            alerts: [{object: person}]
          - name: yard
            url_env: YARD_URL
            group: gpu-a
            options: {seg-every: 4, caption-interval: 5, read-timeout: 2.5}
          - {name: gate, url: 0}
        """, env={"YARD_URL": "rtsp://u:p@10.0.0.6/s"})
    assert [c.name for c in cfg.cameras] == ["door", "yard", "gate"]
    door, yard, gate = cfg.cameras
    assert door.options == {"no_caption": True, "rtsp_transport": "udp", "seg_every": "4",
                            "caption_interval": 5.0, "stride": 2}
    assert door.alerts == [{"object": "person"}]
    assert yard.url == "rtsp://u:p@10.0.0.6/s" and yard.shown_url == "rtsp://***@10.0.0.6/s"
    assert gate.url == "0" and gate.group == "gate"
    g = cfg.groups["gpu-a"]
    assert (g.num_gpus, g.num_cpus, g.resources, g.max_restarts) == (1.0, 2.0, {"site-b": 1.0}, 3)
    assert [c.name for c in g.cameras] == ["door", "yard"]
    assert g.engine_options == {"no_caption": True, "seg_every": "4", "caption_interval": 5.0}


@pytest.mark.parametrize("doc, message", [
    ({"cameras": []}, "config: 'cameras' must be a list with at least one camera"),
    ({"cameras": [{"name": "a b", "url": "rtsp://h/s"}]}, "camera #1: name must be"),
    ({"cameras": [{"name": "door"}]}, "camera 'door': give exactly one of url and url_env"),
    ({"cameras": [{"name": "door", "url_env": "NOPE"}]}, "camera 'door': url_env: environment variable NOPE is not set"),
    ({"cameras": [{"name": "door", "url": "rtsp://h/s", "options": {"seg-size": -1}}]},
     "camera 'door': seg-size must be 0 or more, got -1"),
    ({"cameras": [{"name": "door", "url": "rtsp://h/s", "options": {"segevery": 2}}]},
     "camera 'door': unknown option 'segevery' (did you mean seg-every?)"),
    ({"cameras": [{"name": "door", "url": "rtsp://h/s", "options": {"seg-every": "often"}}]},
     "camera 'door': seg-every"),
    ({"cameras": [{"name": "door", "url": "rtsp://h/s", "options": {"no-caption": "yes"}}]},
     "camera 'door': no-caption must be true or false, got 'yes'"),
    ({"cameras": [{"name": "door", "url": "rtsp://h/s", "colour": 1}]}, "camera 'door': unknown field 'colour'"),
    ({"cameras": [{"name": "door", "url": "rtsp://h/s"}, {"name": "door", "url": "rtsp://h/t"}]},
     "camera 'door': the name is used twice"),
    ({"cameras": [{"name": "a", "url": "rtsp://h/s"}, {"name": "b", "url": "rtsp://h/s"}]},
     "camera 'b': url is the same as camera 'a''s"),
    ({"groups": {"g": {"num_gpus": -1}}, "cameras": [{"name": "a", "url": "rtsp://h/s", "group": "g"}]},
     "group 'g': num_gpus must be 0 or more, got -1"),
    ({"groups": {"g": {"gpus": 1}}, "cameras": [{"name": "a", "url": "rtsp://h/s", "group": "g"}]},
     "group 'g': unknown field 'gpus'"),
    ({"groups": {"empty": {}}, "cameras": [{"name": "a", "url": "rtsp://h/s"}]}, "group 'empty': no camera names it"),
    ({"cameras": [{"name": "a", "url": "rtsp://h/s", "group": "g", "options": {"seg-every": 2}},
                  {"name": "b", "url": "rtsp://h/t", "group": "g"}]},
     "camera 'b': seg-every differs from camera 'a' in group 'g'"),
    ({"camera": []}, "config: unknown section 'camera'"),
])
def test_bad_config_is_one_line_naming_camera_and_field(doc, message):
    with pytest.raises(BadInputError) as err:
        parse(doc, env={})
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_credentials_never_in_errors():
    doc = {"cameras": [{"name": "a", "url": "rtsp://admin:hunter2@h/s"}, {"name": "b", "url": "rtsp://admin:hunter2@h/s"}]}
    with pytest.raises(BadInputError) as err:
        parse(doc, env={})
    assert "hunter2" not in str(err.value)


def test_cli_bad_config_exit_2_one_line(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras:\n  - {name: door, url: 'rtsp://u:hunter2@h/s', options: {stride: 0}}\n")
    proc = subprocess.run([sys.executable, "-m", "streamcap", "monitor", "--config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["streamcap: error: camera 'door': stride must be 1 or more, got 0"]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("cameras: [\n")
    proc = subprocess.run([sys.executable, "-m", "streamcap", "monitor", "--config", str(bad_yaml)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "streamcap", "monitor"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "give one or more camera URLs, or --config" in proc.stderr


def test_different_engines_need_ray(tmp_path):
    from streamcap.cluster.jobs import single_job

    cfg = parse({"cameras": [{"name": "a", "url": "rtsp://h/s", "options": {"seg-every": 2}},
                             {"name": "b", "url": "rtsp://h/t"}]}, env={})
    with pytest.raises(BadInputError, match="without --ray all cameras run in one engine"):
        single_job(cfg, _monitor_defaults(), log=None, argv=[])


def _monitor_defaults() -> dict:
    import inspect

    from streamcap.cli.run import monitor

    return {k: p.default for k, p in inspect.signature(monitor).parameters.items()}


def test_per_camera_options_reach_the_engine():
    from streamcap.cluster.jobs import group_job

    cfg = parse({"defaults": {"no-segment": True},
                 "cameras": [{"name": "door", "url": "rtsp://u:p@h/s", "group": "g",
                              "options": {"caption-interval": 7, "stride": 3, "rtsp-transport": "udp"}},
                             {"name": "yard", "url": "rtsp://h/t", "group": "g", "options": {"caption-interval": 7}}]},
                env={})
    job = group_job(cfg.groups["g"], _monitor_defaults(), log=None, argv=[])
    door, yard = job.sources
    assert (door.name, door.stride, door.rtsp_transport, door.uri) == ("door", 3, "udp", "rtsp://u:p@h/s")
    assert (yard.name, yard.stride, yard.rtsp_transport) == ("yard", 1, None)
    assert job.segment is None and job.caption["interval"] == 7.0


def test_no_ray_import_without_ray():
    code = ("import sys, streamcap.cli, streamcap.cli.run, streamcap.cluster.config, streamcap.cluster.jobs, "
            "streamcap.cluster.monitor; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.slow
def test_monitor_config_without_ray(tmp_path, rtsp_server):
    from conftest import read_jsonl

    cam1 = rtsp_server(mount="cam1", size=(160, 120)).start()
    cam2 = rtsp_server(mount="cam2", size=(160, 120)).start()
    path = tmp_path / "cameras.yaml"
    path.write_text(textwrap.dedent(f"""
        defaults: {{no-segment: true, no-caption: true, rtsp-transport: udp}}
        cameras:
          - {{name: door, url: "{cam1.url.replace('rtsp://', 'rtsp://admin:hunter2@')}"}}
          - {{name: yard, url_env: YARD_URL, options: {{stride: 2}}}}
        """))
    log = tmp_path / "log.jsonl"
    proc = subprocess.run([sys.executable, "-m", "streamcap", "monitor", "--config", str(path), "--log", str(log),
                           "--duration", "6"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "YARD_URL": cam2.url})
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(log)
    frames = {s: [r for r in records if r["event"] == "frame" and r["source"] == s] for s in ("door", "yard")}
    assert frames["door"] and frames["yard"]
    assert "hunter2" not in log.read_text() and "hunter2" not in proc.stderr


def test_readme_example_is_valid():
    import yaml

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Cameras from a file, and a Ray cluster"):]
    block = section[section.index("```yaml") + len("```yaml"):section.index("```\n", section.index("```yaml") + 7)]
    env = {"DOOR_URL": "rtsp://u:p@10.0.0.5/s", "YARD_URL": "rtsp://10.0.0.7/s", "GATE_URL": "rtsp://10.0.0.8/s"}
    cfg = parse(yaml.safe_load(block), env=env)
    assert [c.name for c in cfg.cameras] == ["door", "hall", "yard", "gate"]
    assert cfg.groups["site-a"].resources == {"site-a": 1.0} and cfg.groups["site-b"].num_gpus == 1.0
