//! `fieldbridge-broker device ...` and `fieldbridge-broker app ...`: the platform registry
//! named by a broker configuration file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use fieldbridge_broker::platform::{PlatformRegistry, RegistryError, DEVICE_USERNAME};
use fieldbridge_broker::Config;

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Registers a device and prints its token (shown this once only) on the last line.
    Add {
        /// Broker configuration file with a `platform` section.
        #[arg(long, short)]
        config: PathBuf,
        /// Device type (1 to 36 of A-Z a-z 0-9 . _ -).
        #[arg(long = "type", value_name = "TYPE")]
        device_type: String,
        /// Device id (1 to 36 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        id: String,
        /// Metadata to keep with the device (a JSON object).
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
    },
    /// Removes a device: it can no longer connect.
    Remove {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long = "type", value_name = "TYPE")]
        device_type: String,
        #[arg(long)]
        id: String,
    },
    /// Lists the registered devices: type, id, registration time, metadata.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Registers an application and prints `<api key> <token>` (shown this once only) on
    /// the last line.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        /// Application id (1 to 36 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        id: String,
    },
    /// Removes an application: its API key stops working.
    Remove {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        id: String,
    },
    /// Lists the registered applications: id, API key, registration time.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// The registry named by a configuration file, with its organization.
struct OpenRegistry {
    org: String,
    registry: PlatformRegistry,
    runtime: tokio::runtime::Runtime,
}

impl OpenRegistry {
    fn open(config_path: &Path) -> anyhow::Result<Self> {
        let config = Config::load(config_path)?;
        let Some(platform) = config.platform else {
            bail!("{} has no platform section", config_path.display());
        };
        let Some(registry) = platform.registry else {
            bail!(
                "{}: platform.registry is not set (quickstart has no registry)",
                config_path.display()
            );
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let registry = runtime.block_on(PlatformRegistry::open(&registry))?;
        Ok(Self {
            org: platform.org,
            registry,
            runtime,
        })
    }

    /// Runs one operation on the registry, then closes it.
    fn run<T>(
        &self,
        operation: impl AsyncFnOnce(&PlatformRegistry) -> Result<T, RegistryError>,
    ) -> anyhow::Result<T> {
        let result = self.runtime.block_on(async {
            let result = operation(&self.registry).await;
            self.registry.close().await;
            result
        })?;
        Ok(result)
    }
}

/// Reports the removal of `what` ("device boiler/b1"): an error if it was not registered.
fn report_removed(removed: bool, what: &str) -> anyhow::Result<()> {
    if !removed {
        bail!("no {what} is registered");
    }
    println!("Removed {what}.");
    Ok(())
}

pub fn device(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add {
            config,
            device_type,
            id,
            metadata,
        } => {
            let opened = OpenRegistry::open(&config)?;
            let token = opened.run(async |registry| {
                registry
                    .add_device(&device_type, &id, metadata.as_deref())
                    .await
            })?;
            let org = opened.org;
            println!("Registered device {device_type}/{id} of {org}; client id d:{org}:{device_type}:{id}, user name {DEVICE_USERNAME}.");
            println!("Its token, shown this once only:");
            println!("{token}");
        }
        DeviceCommand::Remove {
            config,
            device_type,
            id,
        } => {
            let removed = OpenRegistry::open(&config)?
                .run(async |registry| registry.remove_device(&device_type, &id).await)?;
            report_removed(removed, &format!("device {device_type}/{id}"))?;
        }
        DeviceCommand::List { config } => {
            let devices =
                OpenRegistry::open(&config)?.run(async |registry| registry.devices().await)?;
            for device in devices {
                println!(
                    "{}\t{}\t{}\t{}",
                    device.device_type, device.device_id, device.created, device.metadata
                );
            }
        }
    }
    Ok(())
}

pub fn app(command: AppCommand) -> anyhow::Result<()> {
    match command {
        AppCommand::Add { config, id } => {
            let opened = OpenRegistry::open(&config)?;
            let org = &opened.org;
            let credentials = opened.run(async |registry| registry.add_app(org, &id).await)?;
            println!("Registered application {id} of {org}; client id a:{org}:{id} (or A:{org}:{id} to share the load).");
            println!("Its API key (the user name) and token (the password), the token shown this once only:");
            println!("{} {}", credentials.api_key, credentials.token);
        }
        AppCommand::Remove { config, id } => {
            let removed = OpenRegistry::open(&config)?
                .run(async |registry| registry.remove_app(&id).await)?;
            report_removed(removed, &format!("application {id}"))?;
        }
        AppCommand::List { config } => {
            let apps = OpenRegistry::open(&config)?.run(async |registry| registry.apps().await)?;
            for app in apps {
                println!("{}\t{}\t{}", app.app_id, app.api_key, app.created);
            }
        }
    }
    Ok(())
}
