//! What a device publishes and accepts, for the profiles that announce it upstream
//! (Sparkplug births, Home Assistant discovery): built from the configuration.

use std::collections::BTreeMap;

use crate::config::{Command, Device, Register};
use crate::registers::{DataType, RegisterKind};

/// One value of a device: a register reading, a command, or both under one name.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub name: String,
    pub data_type: DataType,
    /// Scale or offset apply: the value is a float whatever the register holds.
    pub scaled: bool,
    pub unit: Option<String>,
    /// Polled and published with the device's data.
    pub read: bool,
    /// Writable through a command of this name.
    pub command: Option<Writable>,
    /// How Home Assistant shows it (from the configuration; inferred when absent).
    pub device_class: Option<String>,
    pub state_class: Option<&'static str>,
    pub icon: Option<String>,
}

/// How a command takes its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Writable {
    pub coil: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Named values (`values:`), sent as their names.
    pub options: Vec<(String, f64)>,
    pub scale: f64,
}

/// A device as the profiles describe it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceInfo {
    pub device_type: String,
    pub tags: Vec<Tag>,
}

impl Tag {
    fn reading(register: &Register) -> Tag {
        Tag {
            name: register.name.clone(),
            data_type: register.data_type,
            scaled: register.scale != 1.0 || register.offset != 0.0,
            unit: register.unit.clone(),
            read: true,
            command: None,
            device_class: register.device_class.clone(),
            state_class: register.state_class.map(|class| class.as_str()),
            icon: register.icon.clone(),
        }
    }

    fn writable(command: &Command) -> Writable {
        Writable {
            coil: command.kind == RegisterKind::Coil,
            min: command.min,
            max: command.max,
            options: command
                .values
                .as_ref()
                .map(|values| values.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default(),
            scale: command.scale,
        }
    }
}

impl DeviceInfo {
    /// The registers, then the commands that are not also registers.
    pub fn from_config(device: &Device) -> DeviceInfo {
        let mut tags: Vec<Tag> = device.registers.iter().map(Tag::reading).collect();
        for command in &device.commands {
            match tags.iter_mut().find(|tag| tag.name == command.name) {
                Some(tag) => {
                    tag.command = Some(Tag::writable(command));
                    tag.device_class = tag.device_class.take().or(command.device_class.clone());
                    tag.icon = tag.icon.take().or(command.icon.clone());
                }
                None => tags.push(Tag {
                    name: command.name.clone(),
                    data_type: command.data_type,
                    scaled: command.scale != 1.0 || command.offset != 0.0,
                    unit: None,
                    read: false,
                    command: Some(Tag::writable(command)),
                    device_class: command.device_class.clone(),
                    state_class: None,
                    icon: command.icon.clone(),
                }),
            }
        }
        DeviceInfo {
            device_type: device.device_type.clone(),
            tags,
        }
    }
}

/// Every device's description, by id.
pub type Catalog = BTreeMap<String, DeviceInfo>;
