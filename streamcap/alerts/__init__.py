"""Alerts: rules over the run's records, and their delivery to a webhook and MQTT.

``rules`` (what fires), ``engine`` (when it fires: an ``alert`` record), ``delivery`` (the
bounded, never-blocking delivery threads and the webhook), ``mqtt`` (topics per camera and Home
Assistant discovery). Every part subscribes to the records the pipeline logs.
"""

from streamcap.alerts.engine import AlertEngine
from streamcap.alerts.rules import Rule, Zone, load_rules, rules_from_flags

__all__ = ["AlertEngine", "Rule", "Zone", "load_rules", "rules_from_flags"]
