"""MQTT: camera status, captions and alerts on a topic per camera, and Home Assistant discovery.

Topics (``PREFIX`` is ``streamcap`` unless told otherwise; ``CAM`` is the camera's name made safe
for a topic: lower case, runs of other characters as ``_``):

- ``PREFIX/available``: ``online`` / ``offline`` (retained; ``offline`` is the broker's last will)
- ``PREFIX/CAM/status``: each ``source_status`` record (retained)
- ``PREFIX/CAM/caption``: each ``caption`` record (retained: the caption shown now)
- ``PREFIX/CAM/alert``: each ``alert`` record

Home Assistant discovery (retained, under ``homeassistant/`` by default, sent for every camera
when it is first seen and again after every reconnect): a device per camera with a caption
sensor, a status sensor and an alert binary sensor that turns off ``off_delay`` seconds after an
alert. Messages go out with QoS 1 from the delivery thread; a broker that is down costs queued
messages (counted and reported), never a frame.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any

from streamcap.alerts.delivery import Delivery

DEFAULT_PORT = 1883


def camera_slug(name: str) -> str:
    """``rtsp://***@cam1:554/stream`` -> ``cam1_554_stream``: a topic level and an id."""
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", name.lower())
    text = text.replace("***@", "")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "camera"


def parse_host(value: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` too) -> (host, port); ValueError with the reason."""
    value = value.strip()
    if not value:
        raise ValueError("--mqtt needs HOST[:PORT]")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if not host:
        raise ValueError(f"--mqtt needs a host, got {value!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--mqtt port must be 1-65535, got {port!r}")
        return host, int(port)
    return host, DEFAULT_PORT


class MqttDelivery(Delivery):
    name = "mqtt"

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, username: str | None = None,
                 password: str | None = None, prefix: str = "streamcap", discovery_prefix: str = "homeassistant",
                 cameras: list[str] = (), off_delay_s: int = 30, publish_timeout_s: float = 5.0,
                 connect_wait_s: float = 2.0, client_id: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.host, self.port = host, port
        self.prefix = prefix.strip("/")
        self.discovery_prefix = discovery_prefix.strip("/") if discovery_prefix else None
        self.off_delay_s = off_delay_s
        self.publish_timeout_s = publish_timeout_s
        self.connect_wait_s = connect_wait_s
        self._username, self._password = username, password
        self._client_id = client_id or f"streamcap-{uuid.uuid4().hex[:8]}"
        self._connected = threading.Event()
        self._cameras: dict[str, str] = {}  # camera name -> slug, announced
        self._cameras_lock = threading.Lock()
        self._initial = list(cameras)
        self.client = None

    # -- connection ------------------------------------------------------------------------------
    def start(self) -> "MqttDelivery":
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.will_set(f"{self.prefix}/available", "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(self.max_queue)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a, **k: self._connected.clear()
        self.client = client
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        super().start()
        for camera in self._initial:
            self._announce(camera)
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            return
        self._connected.set()
        # (Re)announce from paho's thread straight away: retained, so late subscribers get them.
        client.publish(f"{self.prefix}/available", "online", qos=1, retain=True)
        with self._cameras_lock:
            known = dict(self._cameras)
        for camera, slug in known.items():
            for topic, payload in self.discovery(camera, slug):
                client.publish(topic, payload, qos=1, retain=True)

    def stop_transport(self) -> None:
        if self.client is None:
            return
        try:
            if self._connected.is_set():
                self.client.publish(f"{self.prefix}/available", "offline", qos=1, retain=True).wait_for_publish(1.0)
        except Exception:
            pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- what goes out ---------------------------------------------------------------------------
    def topic(self, camera: str, kind: str) -> str:
        return f"{self.prefix}/{camera_slug(camera)}/{kind}"

    def discovery(self, camera: str, slug: str) -> list[tuple[str, str]]:
        if not self.discovery_prefix:
            return []
        device = {"identifiers": [f"streamcap_{slug}"], "name": f"streamcap {camera}", "manufacturer": "streamcap"}
        common = {"availability_topic": f"{self.prefix}/available", "device": device}
        base = f"{self.prefix}/{slug}"
        configs = [
            ("sensor", "caption", {"name": "Caption", "state_topic": f"{base}/caption",
                                   "value_template": "{{ value_json.shown }}", "icon": "mdi:text-box-outline",
                                   "json_attributes_topic": f"{base}/caption"}),
            ("sensor", "status", {"name": "Status", "state_topic": f"{base}/status",
                                  "value_template": "{{ value_json.status }}", "icon": "mdi:cctv"}),
            ("binary_sensor", "alert", {"name": "Alert", "state_topic": f"{base}/alert",
                                        "value_template": "{{ 'ON' if value_json.rule else 'OFF' }}",
                                        "payload_on": "ON", "payload_off": "OFF", "off_delay": self.off_delay_s,
                                        "json_attributes_topic": f"{base}/alert"}),
        ]
        out = []
        for component, key, config in configs:
            config = {**config, **common, "unique_id": f"streamcap_{slug}_{key}"}
            out.append((f"{self.discovery_prefix}/{component}/streamcap_{slug}/{key}/config",
                        json.dumps(config, separators=(",", ":"))))
        return out

    def _announce(self, camera: str) -> None:
        """Queue the discovery messages of a camera seen for the first time."""
        with self._cameras_lock:
            if camera in self._cameras:
                return
            slug = camera_slug(camera)
            self._cameras[camera] = slug
        for topic, payload in self.discovery(camera, slug):
            self.submit((topic, payload, True, {"camera": camera, "topic": topic}))

    def accept(self, record: dict) -> list[Any]:
        event, camera = record.get("event"), record.get("source")
        kind = {"source_status": "status", "caption": "caption", "alert": "alert"}.get(event)
        if kind is None or camera is None:
            return []
        self._announce(camera)
        payload = json.dumps({k: v for k, v in record.items() if k != "schema"}, ensure_ascii=False,
                             separators=(",", ":"), default=str)
        topic = self.topic(camera, kind)
        return [(topic, payload, kind != "alert", {"camera": camera, "topic": topic, "event": event})]

    def describe(self, item: Any) -> dict[str, Any]:
        return dict(item[3])

    def send(self, item: Any) -> None:
        topic, payload, retain, _ = item
        if not self._connected.wait(self.connect_wait_s):
            raise ConnectionError("not connected to the MQTT broker")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(self.publish_timeout_s)
        if not info.is_published():
            raise TimeoutError("the broker did not acknowledge the message")
