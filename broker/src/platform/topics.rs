//! The platform's topic spaces: what devices and applications may publish and subscribe
//! to, and the rewriting between a device's short topics and the application view.
//!
//! | device view                 | application view (what the broker routes)        |
//! |-----------------------------|--------------------------------------------------|
//! | `iot-2/evt/<e>/fmt/<f>`     | `iot-2/type/<t>/id/<d>/evt/<e>/fmt/<f>`          |
//! | `iot-2/cmd/<c>/fmt/<f>`     | `iot-2/type/<t>/id/<d>/cmd/<c>/fmt/<f>`          |
//! | `iotdm-1/<rest>`            | `iotdm-1/type/<t>/id/<d>/<rest>`                 |
//! | `iotdevice-1/<rest>`        | `iotdevice-1/type/<t>/id/<d>/<rest>`             |
//!
//! Pure functions: the connection code calls them, the tests below drive them directly.

use std::fmt;

use fieldbridge_mqtt::platform::valid_name;

/// Why a publication or subscription is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the topics this kind of client may use.
    OutsideTopicSpace,
    /// Quickstart has no commands and no device management.
    NotInQuickstart,
    /// Quickstart applications name the device type or application id.
    WildcardInQuickstart,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::OutsideTopicSpace => "outside the client's topic space",
            Refusal::NotInQuickstart => "not available in quickstart",
            Refusal::WildcardInQuickstart => {
                "quickstart does not allow a wildcard for the device type or application id"
            }
        })
    }
}

/// A publication the platform lets through, in the application view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub topic: String,
    /// A device event: never retained, rate limited in quickstart.
    pub event: bool,
}

/// The topic space of one device, with its prefixes computed once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopics {
    /// `iot-2/type/<t>/id/<d>/`
    iot: String,
    /// `iotdm-1/type/<t>/id/<d>/`
    dm: String,
    /// `iotdevice-1/type/<t>/id/<d>/`
    device: String,
}

impl DeviceTopics {
    pub fn new(device_type: &str, device_id: &str) -> Self {
        let path = format!("type/{device_type}/id/{device_id}/");
        Self {
            iot: format!("iot-2/{path}"),
            dm: format!("iotdm-1/{path}"),
            device: format!("iotdevice-1/{path}"),
        }
    }

    /// A device's PUBLISH: only its events and device management responses.
    pub fn publish(&self, topic: &str, quickstart: bool) -> Result<Routed, Refusal> {
        if let Some(rest) = topic.strip_prefix("iot-2/") {
            let levels: Vec<&str> = rest.split('/').collect();
            return match levels.as_slice() {
                ["evt", event, "fmt", format] if !event.is_empty() && !format.is_empty() => {
                    Ok(Routed {
                        topic: format!("{}{rest}", self.iot),
                        event: true,
                    })
                }
                _ => Err(Refusal::OutsideTopicSpace),
            };
        }
        if let Some(rest) = topic.strip_prefix("iotdevice-1/") {
            if rest.is_empty() {
                return Err(Refusal::OutsideTopicSpace);
            }
            if quickstart {
                return Err(Refusal::NotInQuickstart);
            }
            return Ok(Routed {
                topic: format!("{}{rest}", self.device),
                event: false,
            });
        }
        Err(Refusal::OutsideTopicSpace)
    }

    /// A device's subscription, as the filter the broker subscribes it to: only its own
    /// commands (`+` allowed for command and format) and device management requests.
    pub fn filter(&self, filter: &str, quickstart: bool) -> Result<String, Refusal> {
        let mapped = self.map_filter(filter).ok_or(Refusal::OutsideTopicSpace)?;
        if quickstart {
            return Err(Refusal::NotInQuickstart);
        }
        Ok(mapped)
    }

    /// The broker's filter for a device's UNSUBSCRIBE (`None`: it cannot have subscribed).
    pub fn map_filter(&self, filter: &str) -> Option<String> {
        if let Some(rest) = filter.strip_prefix("iot-2/") {
            let levels: Vec<&str> = rest.split('/').collect();
            let literal_or_plus = |level: &str| !level.is_empty() && level != "#";
            return match levels.as_slice() {
                ["cmd", command, "fmt", format]
                    if literal_or_plus(command) && literal_or_plus(format) =>
                {
                    Some(format!("{}{rest}", self.iot))
                }
                _ => None,
            };
        }
        match filter.strip_prefix("iotdm-1/") {
            Some(rest) if !rest.is_empty() => Some(format!("{}{rest}", self.dm)),
            _ => None,
        }
    }

    /// The device's view of a message delivered to it; `None` if the message is not one
    /// of its commands or device management requests.
    pub fn device_view(&self, topic: &str) -> Option<String> {
        if let Some(rest) = topic.strip_prefix(self.iot.as_str()) {
            return Some(format!("iot-2/{rest}"));
        }
        topic
            .strip_prefix(self.dm.as_str())
            .map(|rest| format!("iotdm-1/{rest}"))
    }
}

/// An application's PUBLISH: events and commands of any device of the org (as the device),
/// and device management requests.
pub fn app_publish(topic: &str, quickstart: bool) -> Result<Routed, Refusal> {
    let levels: Vec<&str> = topic.split('/').collect();
    let device = |t: &str, d: &str| valid_name(t) && valid_name(d);
    let named = |level: &str| !level.is_empty();
    match levels.as_slice() {
        ["iot-2", "type", t, "id", d, "evt", e, "fmt", f]
            if device(t, d) && named(e) && named(f) =>
        {
            Ok(Routed {
                topic: topic.to_owned(),
                event: true,
            })
        }
        ["iot-2", "type", t, "id", d, "cmd", c, "fmt", f]
            if device(t, d) && named(c) && named(f) =>
        {
            if quickstart {
                return Err(Refusal::NotInQuickstart);
            }
            Ok(Routed {
                topic: topic.to_owned(),
                event: false,
            })
        }
        ["iotdm-1", "type", t, "id", d, rest @ ..] if device(t, d) && !rest.is_empty() => {
            if quickstart {
                return Err(Refusal::NotInQuickstart);
            }
            Ok(Routed {
                topic: topic.to_owned(),
                event: false,
            })
        }
        _ => Err(Refusal::OutsideTopicSpace),
    }
}

/// Everything an application may read.
const APP_READABLE: [&str; 6] = [
    "iot-2/type/+/id/+/evt/+/fmt/+",
    "iot-2/type/+/id/+/cmd/+/fmt/+",
    "iot-2/type/+/id/+/mon",
    "iot-2/app/+/mon",
    "iotdm-1/type/+/id/+/#",
    "iotdevice-1/type/+/id/+/#",
];
/// What a quickstart application may read.
const QUICKSTART_READABLE: [&str; 3] = [
    "iot-2/type/+/id/+/evt/+/fmt/+",
    "iot-2/type/+/id/+/mon",
    "iot-2/app/+/mon",
];
/// What quickstart has not: commands and device management.
const QUICKSTART_MISSING: [&str; 3] = [
    "iot-2/type/+/id/+/cmd/+/fmt/+",
    "iotdm-1/#",
    "iotdevice-1/#",
];

/// An application's subscription: any filter that can match something it may read.
pub fn app_filter(filter: &str, quickstart: bool) -> Result<(), Refusal> {
    if filter.starts_with('$') {
        return Err(Refusal::OutsideTopicSpace);
    }
    if quickstart
        && QUICKSTART_MISSING
            .iter()
            .any(|missing| intersects(missing, filter))
    {
        return Err(Refusal::NotInQuickstart);
    }
    let readable: &[&str] = if quickstart {
        &QUICKSTART_READABLE
    } else {
        &APP_READABLE
    };
    if !readable.iter().any(|allowed| intersects(allowed, filter)) {
        return Err(Refusal::OutsideTopicSpace);
    }
    if quickstart {
        // The level naming the device type (iot-2/type/<t>) or the application (iot-2/app/<a>).
        match filter.split('/').nth(2) {
            Some(level) if level != "+" && level != "#" => {}
            _ => return Err(Refusal::WildcardInQuickstart),
        }
    }
    Ok(())
}

/// Whether some topic matches both filters.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Option<Refusal> = None;
    const OUT: Option<Refusal> = Some(Refusal::OutsideTopicSpace);
    const QS: Option<Refusal> = Some(Refusal::NotInQuickstart);
    const WILD: Option<Refusal> = Some(Refusal::WildcardInQuickstart);

    fn boiler() -> DeviceTopics {
        DeviceTopics::new("boiler", "b1")
    }

    #[test]
    fn device_publications() {
        // (topic, registered, quickstart, routed topic, event)
        let cases = [
            (
                "iot-2/evt/status/fmt/json",
                OK,
                OK,
                "iot-2/type/boiler/id/b1/evt/status/fmt/json",
                true,
            ),
            (
                "iot-2/evt/health/fmt/bin",
                OK,
                OK,
                "iot-2/type/boiler/id/b1/evt/health/fmt/bin",
                true,
            ),
            (
                "iotdevice-1/response",
                OK,
                QS,
                "iotdevice-1/type/boiler/id/b1/response",
                false,
            ),
            (
                "iotdevice-1/add/diag/log",
                OK,
                QS,
                "iotdevice-1/type/boiler/id/b1/add/diag/log",
                false,
            ),
            ("iot-2/cmd/setpoint/fmt/json", OUT, OUT, "", false),
            ("iot-2/evt/status/fmt", OUT, OUT, "", false),
            ("iot-2/evt/status/fmt/json/x", OUT, OUT, "", false),
            ("iot-2/evt//fmt/json", OUT, OUT, "", false),
            (
                "iot-2/type/boiler/id/b2/evt/status/fmt/json",
                OUT,
                OUT,
                "",
                false,
            ),
            (
                "iot-2/type/boiler/id/b1/evt/status/fmt/json",
                OUT,
                OUT,
                "",
                false,
            ),
            ("iot-2/type/boiler/id/b1/mon", OUT, OUT, "", false),
            ("iotdm-1/response", OUT, OUT, "", false),
            ("iotdevice-1/", OUT, OUT, "", false),
            ("iotdevice-1", OUT, OUT, "", false),
            ("sensors/temperature", OUT, OUT, "", false),
            ("$SYS/broker/uptime", OUT, OUT, "", false),
        ];
        for (topic, registered, quickstart, routed, event) in cases {
            for (quick, expected) in [(false, registered), (true, quickstart)] {
                let result = boiler().publish(topic, quick);
                match expected {
                    None => assert_eq!(
                        result,
                        Ok(Routed {
                            topic: routed.into(),
                            event
                        }),
                        "{topic} quickstart={quick}"
                    ),
                    Some(refusal) => {
                        assert_eq!(result, Err(refusal), "{topic} quickstart={quick}")
                    }
                }
            }
        }
    }

    #[test]
    fn device_subscriptions() {
        let cases = [
            (
                "iot-2/cmd/setpoint/fmt/json",
                OK,
                "iot-2/type/boiler/id/b1/cmd/setpoint/fmt/json",
            ),
            (
                "iot-2/cmd/+/fmt/json",
                OK,
                "iot-2/type/boiler/id/b1/cmd/+/fmt/json",
            ),
            (
                "iot-2/cmd/+/fmt/+",
                OK,
                "iot-2/type/boiler/id/b1/cmd/+/fmt/+",
            ),
            ("iotdm-1/#", OK, "iotdm-1/type/boiler/id/b1/#"),
            (
                "iotdm-1/mgmt/initiate/+",
                OK,
                "iotdm-1/type/boiler/id/b1/mgmt/initiate/+",
            ),
            ("iot-2/cmd/#", OUT, ""),
            ("iot-2/cmd/+/fmt/#", OUT, ""),
            ("iot-2/cmd/+", OUT, ""),
            ("iot-2/evt/+/fmt/json", OUT, ""),
            ("iot-2/#", OUT, ""),
            ("iot-2/type/boiler/id/b2/cmd/+/fmt/json", OUT, ""),
            ("iot-2/type/+/id/+/evt/+/fmt/+", OUT, ""),
            ("iotdevice-1/#", OUT, ""),
            ("iotdm-1", OUT, ""),
            ("#", OUT, ""),
            ("+/cmd/+/fmt/+", OUT, ""),
        ];
        for (filter, expected, mapped) in cases {
            match expected {
                None => {
                    assert_eq!(
                        boiler().filter(filter, false),
                        Ok(mapped.to_owned()),
                        "{filter}"
                    );
                    assert_eq!(boiler().map_filter(filter), Some(mapped.to_owned()));
                    assert_eq!(
                        boiler().filter(filter, true),
                        Err(Refusal::NotInQuickstart),
                        "{filter} in quickstart"
                    );
                }
                Some(refusal) => {
                    assert_eq!(boiler().filter(filter, false), Err(refusal), "{filter}");
                    assert_eq!(boiler().filter(filter, true), Err(refusal), "{filter}");
                    assert_eq!(boiler().map_filter(filter), None, "{filter}");
                }
            }
        }
    }

    #[test]
    fn device_view_of_deliveries() {
        let cases = [
            (
                "iot-2/type/boiler/id/b1/cmd/setpoint/fmt/json",
                Some("iot-2/cmd/setpoint/fmt/json"),
            ),
            (
                "iotdm-1/type/boiler/id/b1/mgmt/initiate/device/reboot",
                Some("iotdm-1/mgmt/initiate/device/reboot"),
            ),
            ("iot-2/type/boiler/id/b2/cmd/setpoint/fmt/json", None),
            ("iot-2/type/boiler/id/b10/cmd/setpoint/fmt/json", None),
            ("iot-2/type/boilers/id/b1/cmd/setpoint/fmt/json", None),
            ("iotdm-1/type/boiler/id/b2/response", None),
            ("other/topic", None),
        ];
        for (topic, expected) in cases {
            assert_eq!(boiler().device_view(topic).as_deref(), expected, "{topic}");
        }
    }

    #[test]
    fn device_round_trip_is_isolated() {
        // What one device subscribes to never matches another device's topics.
        let b1 = DeviceTopics::new("boiler", "b1");
        let b2 = DeviceTopics::new("boiler", "b2");
        let b1_filter = b1.filter("iot-2/cmd/+/fmt/+", false).expect("allowed");
        let b2_command = "iot-2/type/boiler/id/b2/cmd/setpoint/fmt/json";
        assert!(!fieldbridge_mqtt::topic::matches(&b1_filter, b2_command));
        let b2_event = b2
            .publish("iot-2/evt/status/fmt/json", false)
            .expect("allowed");
        assert!(!fieldbridge_mqtt::topic::matches(
            &b1_filter,
            &b2_event.topic
        ));
        let b1_dm = b1.filter("iotdm-1/#", false).expect("allowed");
        assert!(!fieldbridge_mqtt::topic::matches(
            &b1_dm,
            "iotdm-1/type/boiler/id/b2/x"
        ));
        assert!(fieldbridge_mqtt::topic::matches(
            &b1_dm,
            "iotdm-1/type/boiler/id/b1/x"
        ));
    }

    #[test]
    fn application_publications() {
        let cases = [
            ("iot-2/type/boiler/id/b1/evt/status/fmt/json", OK, OK, true),
            (
                "iot-2/type/boiler/id/b1/cmd/setpoint/fmt/json",
                OK,
                QS,
                false,
            ),
            (
                "iotdm-1/type/boiler/id/b1/mgmt/initiate/device/reboot",
                OK,
                QS,
                false,
            ),
            ("iot-2/type/boiler/id/b1/mon", OUT, OUT, false),
            ("iot-2/app/x/mon", OUT, OUT, false),
            ("iotdevice-1/type/boiler/id/b1/response", OUT, OUT, false),
            ("iot-2/evt/status/fmt/json", OUT, OUT, false),
            (
                "iot-2/type/bad type/id/b1/evt/status/fmt/json",
                OUT,
                OUT,
                false,
            ),
            ("iot-2/type/boiler/id//evt/status/fmt/json", OUT, OUT, false),
            (
                "iot-2/type/boiler/id/b1/evt/status/fmt/json/more",
                OUT,
                OUT,
                false,
            ),
            ("iotdm-1/type/boiler/id/b1", OUT, OUT, false),
            ("anything", OUT, OUT, false),
        ];
        for (topic, registered, quickstart, event) in cases {
            for (quick, expected) in [(false, registered), (true, quickstart)] {
                let result = app_publish(topic, quick);
                match expected {
                    None => assert_eq!(
                        result,
                        Ok(Routed {
                            topic: topic.into(),
                            event
                        }),
                        "{topic} quickstart={quick}"
                    ),
                    Some(refusal) => {
                        assert_eq!(result, Err(refusal), "{topic} quickstart={quick}")
                    }
                }
            }
        }
    }

    #[test]
    fn application_subscriptions() {
        let cases = [
            ("iot-2/type/+/id/+/evt/+/fmt/+", OK, WILD),
            ("iot-2/type/boiler/id/+/evt/+/fmt/json", OK, OK),
            ("iot-2/type/boiler/id/b1/evt/status/fmt/json", OK, OK),
            ("iot-2/type/boiler/id/b1/mon", OK, OK),
            ("iot-2/type/+/id/+/mon", OK, WILD),
            ("iot-2/app/+/mon", OK, WILD),
            ("iot-2/app/dash/mon", OK, OK),
            ("iot-2/type/boiler/id/+/cmd/+/fmt/+", OK, QS),
            ("iotdm-1/type/+/id/+/#", OK, QS),
            ("iotdevice-1/type/boiler/id/b1/response", OK, QS),
            ("iot-2/type/boiler/#", OK, QS),
            ("iot-2/#", OK, QS),
            ("#", OK, QS),
            ("+/type/+/id/+/evt/+/fmt/+", OK, QS),
            ("iot-2/evt/+/fmt/+", OUT, OUT),
            ("iot-2/type/boiler/id/b1/evt", OUT, OUT),
            ("iot-2/app/dash/status", OUT, OUT),
            ("sensors/#", OUT, OUT),
            ("$SYS/#", OUT, OUT),
        ];
        for (filter, registered, quickstart) in cases {
            assert_eq!(app_filter(filter, false).err(), registered, "{filter}");
            assert_eq!(
                app_filter(filter, true).err(),
                quickstart,
                "{filter} in quickstart"
            );
        }
    }

    #[test]
    fn filter_intersection() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "x/y", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/+", true),
            ("a/+/c", "a/b/d", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(intersects(a, b), expected, "{a} vs {b}");
            assert_eq!(intersects(b, a), expected, "{b} vs {a}");
        }
    }
}
