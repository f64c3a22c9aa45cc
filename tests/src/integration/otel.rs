//! OpenTelemetry export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the API and the worker
//! post their spans to a collector (here, one the test runs), and a webhook's or a
//! signup's request id is on both the request's span and the spans of the jobs it caused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

use crate::helpers::{Process, TestApp, our_command, wait_for};

/// A span as the collector received it: its process, name and attributes.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP collector of traces on a random port: what is posted to `/v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

impl Collector {
    fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let received = spans.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let received = received.clone();
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let received = received.clone();
                    async move {
                        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                            return HttpResponse::BadRequest().finish();
                        };
                        let mut spans = received.lock().unwrap();
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .map(|a| text(a.value.as_ref()))
                                .unwrap_or_default();
                            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                                let attributes =
                                    span.attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect();
                                spans.push(ReceivedSpan { service: service.clone(), name: span.name, attributes });
                            }
                        }
                        HttpResponse::Ok().content_type("application/x-protobuf").body(Vec::new())
                    }
                }),
            )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self { url, spans }
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_signups_request_id_is_on_the_exported_spans_of_its_request_and_of_its_jobs() {
    let collector = Collector::start();
    let app = TestApp::api_only().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        // Export batches every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("METRICS_ADDR", "off"),
        ("RATE_LIMIT_ONBOARD_PER_MINUTE", "0"),
    ];
    let _api =
        Process::spawn(our_command("rsolv-api", &app.db.url).envs(otel).env("BIND_ADDR", format!("127.0.0.1:{port}")));
    let _worker = Process::worker(&app.db.url, &otel);
    let client = app.client.clone();
    wait_for("the API process", Duration::from_secs(20), || {
        let (client, base) = (client.clone(), base.clone());
        async move { client.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    let signup = app
        .client
        .post(format!("{base}/api/v1/customers/onboard"))
        .header("x-request-id", "otel-trace-7")
        .json(&serde_json::json!({ "name": "Traced", "email": "traced@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 202);

    let traced = |span: &ReceivedSpan| span.attributes.get("request_id").map(String::as_str) == Some("otel-trace-7");
    wait_for("the request's span and its job's span at the collector", Duration::from_secs(20), || async {
        let spans = collector.spans();
        let request = spans.iter().any(|s| traced(s) && s.service == "rsolv-api" && s.name == "request");
        let job = spans.iter().any(|s| {
            traced(s)
                && s.service == "rsolv-worker"
                && s.name == "job"
                && s.attributes.get("kind").map(String::as_str) == Some("provision_customer")
        });
        request && job
    })
    .await;
    let job = collector.spans().into_iter().find(|s| traced(s) && s.name == "job").unwrap();
    assert!(job.attributes.contains_key("job_id") && job.attributes.contains_key("attempt"), "{job:?}");
}
