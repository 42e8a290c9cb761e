//! Logging: `tracing` events with their fields, human or JSON, and a filter that can be
//! replaced at run time. The filter belongs to the output layer, not to the whole subscriber,
//! so a later layer (error telemetry) keeps seeing the events it wants.

use std::sync::Arc;

use anyhow::{Context, Result};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry, reload};

use crate::config::LogFormat;

/// A handle to swap the output layer's filter.
#[derive(Clone)]
pub(crate) struct LogControl {
    reload: Arc<dyn Fn(EnvFilter) -> Result<()> + Send + Sync>,
}

impl LogControl {
    pub(crate) fn set(&self, directives: &str) -> Result<()> {
        let filter = EnvFilter::try_new(directives).context("not a valid log filter")?;
        (self.reload)(filter)
    }
}

pub(crate) fn init(level: &str, format: LogFormat) -> Result<LogControl> {
    let filter = EnvFilter::try_new(level)
        .with_context(|| format!("log-level: {level:?} is not a valid filter"))?;
    let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(filter);
    let output = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(crate::telemetry::layer())
        .try_init()
        .context("logging already set up")?;
    Ok(LogControl {
        reload: Arc::new(move |filter| {
            handle
                .reload(filter)
                .context("cannot replace the log filter")
        }),
    })
}
