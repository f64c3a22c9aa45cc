//! Tracing setup, shared by both binaries. `RUST_LOG` filters (default `info`); lines
//! go to stdout as text or JSON (`LOG_FORMAT`).
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and the `otel` feature, on in the binaries),
//! every span is also exported over OTLP/HTTP to that collector, named after its
//! process (`rsolv-api`, `rsolv-worker`): the request spans with their `request_id`, the
//! job spans with kind, id, attempt, customer and the `request_id` of the request that
//! enqueued them. `OTEL_BSP_SCHEDULE_DELAY` and the SDK's other batch settings apply.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

pub mod metrics;

/// Keeps span export running; flushes what is buffered when dropped (hold it in `main`).
#[must_use = "spans are flushed when this is dropped"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("span export did not flush: {error}");
        }
    }
}

/// Installs the process's subscriber (once; later calls change nothing).
/// `service`: the process's name in exported spans. `otlp_endpoint`: the collector's
/// base URL (`…:4318`), or `None` for logs only.
pub fn init(format: LogFormat, service: &'static str, otlp_endpoint: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_target(false);
    let lines = match format {
        LogFormat::Json => lines.json().with_filter(filter).boxed(),
        LogFormat::Pretty => lines.with_filter(filter).boxed(),
    };
    let registry = tracing_subscriber::registry().with(lines);
    #[cfg(feature = "otel")]
    {
        let provider = otlp_endpoint.and_then(|endpoint| match otel::provider(service, endpoint) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("spans are not exported to {endpoint}: {error}");
                None
            }
        });
        // Spans go out at `info` and above whatever RUST_LOG keeps in the lines.
        let layer = provider.as_ref().map(|provider| {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        let _ = registry.with(layer).try_init();
        Telemetry { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        if let Some(endpoint) = otlp_endpoint {
            eprintln!("spans are not exported to {endpoint}: built without the `otel` feature");
        }
        let _ = (service, registry.try_init());
        Telemetry {}
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry_otlp::{ExporterBuildError, Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Batches spans and posts them to `{endpoint}/v1/traces` as protobuf.
    pub fn provider(service: &'static str, endpoint: &str) -> Result<SdkTracerProvider, ExporterBuildError> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build())
    }
}
