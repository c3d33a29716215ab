"""Checks a device-based discovery payload against Home Assistant's documented MQTT
discovery schema (https://www.home-assistant.io/integrations/mqtt/ and the sensor,
binary_sensor, number, switch and select pages), independently of the gateway, and
renders every component's value_template with Jinja2 (as Home Assistant does) against
a state object.

  check_discovery.py CONFIG_JSON STATE_JSON
prints {"<component>": "<rendered value>", ...}; exits 1 listing every violation.
"""

import json
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment

# Abbreviations Home Assistant expands (a subset: the ones a payload may use here).
ABBREVIATIONS = {
    "dev": "device", "o": "origin", "cmps": "components", "p": "platform",
    "ids": "identifiers", "mdl": "model", "mf": "manufacturer", "sw": "sw_version",
    "uniq_id": "unique_id", "stat_t": "state_topic", "cmd_t": "command_topic",
    "avty_t": "availability_topic", "val_tpl": "value_template",
    "unit_of_meas": "unit_of_measurement", "dev_cla": "device_class",
    "stat_cla": "state_class", "pl_on": "payload_on", "pl_off": "payload_off",
    "via_dev": "via_device",
}

COMMON = {
    "name", "unique_id", "icon", "availability_topic", "payload_available",
    "payload_not_available", "state_topic", "value_template", "qos", "platform",
    "object_id", "default_entity_id", "entity_category", "enabled_by_default",
    "json_attributes_topic", "json_attributes_template", "encoding",
}
PLATFORMS = {
    "sensor": COMMON | {"unit_of_measurement", "device_class", "state_class",
                        "expire_after", "force_update", "suggested_display_precision",
                        "options", "last_reset_value_template"},
    "binary_sensor": COMMON | {"device_class", "payload_on", "payload_off",
                               "expire_after", "force_update", "off_delay"},
    "number": COMMON | {"command_topic", "command_template", "min", "max", "step",
                        "mode", "unit_of_measurement", "device_class", "optimistic",
                        "payload_reset", "retain"},
    "switch": COMMON | {"command_topic", "payload_on", "payload_off", "state_on",
                        "state_off", "optimistic", "retain", "device_class"},
    "select": COMMON | {"command_topic", "command_template", "options", "optimistic",
                        "retain"},
}
REQUIRED = {
    "number": {"command_topic"},
    "select": {"command_topic", "options"},
    "switch": {"command_topic"},
}
SENSOR_CLASSES = {
    "apparent_power", "aqi", "area", "atmospheric_pressure", "battery",
    "blood_glucose_concentration", "carbon_dioxide", "carbon_monoxide", "conductivity",
    "current", "data_rate", "data_size", "date", "distance", "duration", "energy",
    "energy_distance", "energy_storage", "enum", "frequency", "gas", "humidity",
    "illuminance", "irradiance", "moisture", "monetary", "nitrogen_dioxide",
    "nitrogen_monoxide", "nitrous_oxide", "ozone", "ph", "pm1", "pm10", "pm25",
    "power_factor", "power", "precipitation", "precipitation_intensity", "pressure",
    "reactive_energy", "reactive_power", "signal_strength", "sound_pressure", "speed",
    "sulphur_dioxide", "temperature", "timestamp", "volatile_organic_compounds",
    "volatile_organic_compounds_parts", "voltage", "volume", "volume_flow_rate",
    "volume_storage", "water", "weight", "wind_direction", "wind_speed",
}
# Units Home Assistant accepts for some device classes.
CLASS_UNITS = {
    "temperature": {"°C", "°F", "K"},
    "energy": {"Wh", "kWh", "MWh", "GWh", "TWh", "mWh", "J", "kJ", "MJ", "GJ", "cal", "kcal", "Mcal", "Gcal"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "current": {"µA", "mA", "A"},
    "pressure": {"mPa", "Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi", "inH₂O"},
    "humidity": {"%"},
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}


def expand(mapping):
    return {ABBREVIATIONS.get(key, key): value for key, value in mapping.items()}


def check(config, state):
    errors = []
    root = expand(config)
    device = expand(root.get("device") or {})
    if not (device.get("identifiers") or device.get("connections")):
        errors.append("device needs identifiers or connections")
    origin = expand(root.get("origin") or {})
    if not origin.get("name"):
        errors.append("origin (o) with a name is required for device discovery")
    components = root.get("components")
    if not isinstance(components, dict) or not components:
        errors.append("components (cmps) must be a non-empty mapping")
        return errors, {}
    env = ImmutableSandboxedEnvironment()
    rendered = {}
    unique_ids = set()
    for key, raw in components.items():
        c = expand(raw)
        platform = c.get("platform")
        if platform not in PLATFORMS:
            errors.append(f"{key}: unknown platform {platform!r}")
            continue
        for option in c:
            if option not in PLATFORMS[platform]:
                errors.append(f"{key}: {option!r} is not a {platform} option")
        for option in REQUIRED.get(platform, ()):
            if option not in c:
                errors.append(f"{key}: {platform} requires {option}")
        if not c.get("unique_id"):
            errors.append(f"{key}: device discovery needs a unique_id")
        elif c["unique_id"] in unique_ids:
            errors.append(f"{key}: unique_id {c['unique_id']} is used twice")
        unique_ids.add(c.get("unique_id"))
        if "state_topic" not in c and "state_topic" not in root:
            errors.append(f"{key}: no state_topic (own or shared)")
        device_class = c.get("device_class")
        if platform == "sensor":
            if device_class is not None and device_class not in SENSOR_CLASSES:
                errors.append(f"{key}: {device_class!r} is not a sensor device class")
            units = CLASS_UNITS.get(device_class)
            if units is not None and c.get("unit_of_measurement") not in units:
                errors.append(f"{key}: unit {c.get('unit_of_measurement')!r} is not valid for {device_class}")
            state_class = c.get("state_class")
            if state_class is not None and state_class not in STATE_CLASSES:
                errors.append(f"{key}: {state_class!r} is not a state class")
            if device_class == "energy" and state_class not in ("total", "total_increasing"):
                errors.append(f"{key}: energy needs state_class total or total_increasing")
        if platform == "number":
            if not c.get("min", 1) < c.get("max", 100):
                errors.append(f"{key}: min must be below max")
            if c.get("step", 1) < 0.001:
                errors.append(f"{key}: step must be at least 0.001")
            if c.get("mode", "auto") not in ("auto", "box", "slider"):
                errors.append(f"{key}: mode must be auto, box or slider")
        if platform == "select":
            options = c.get("options")
            if not (isinstance(options, list) and options and all(isinstance(o, str) for o in options)):
                errors.append(f"{key}: options must be a list of strings")
        template = c.get("value_template")
        if template is not None:
            try:
                rendered[key] = env.from_string(template).render(value_json=state, value=json.dumps(state))
            except Exception as error:  # noqa: BLE001 - any template error is a finding
                errors.append(f"{key}: value_template fails: {error}")
    return errors, rendered


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        config = json.load(f)
    with open(sys.argv[2]) as f:
        state = json.load(f)
    errors, rendered = check(config, state)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(rendered))
