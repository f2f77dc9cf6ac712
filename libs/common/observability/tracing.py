"""OpenTelemetry tracing, and W3C trace context carried in Kafka headers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry import context, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

KafkaHeaders = list[tuple[str, bytes]]


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    """Install a tracer provider; spans are exported over OTLP/HTTP when an endpoint is set.

    Without an endpoint spans are still created, so trace ids reach logs and headers.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": f"signalops-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_endpoint}/v1/traces"))
        )
    trace.set_tracer_provider(provider)


def tracer(name: str = "signalops") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """Kafka headers with the current trace context (traceparent, tracestate)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    out = list(headers or [])
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_context(headers: Sequence[tuple[str, bytes]] | None) -> context.Context:
    """The trace context a producer put in the headers (or an empty one)."""
    carrier = {k: v.decode(errors="replace") for k, v in (headers or ())}
    return extract(carrier)


def header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode(errors="replace")
    return None


def producer_links(
    headers_of_records: Iterable[Sequence[tuple[str, bytes]] | None], limit: int = 128
) -> list[trace.Link]:
    """Links to the producers' spans of a consumed batch (one batch span, many traces)."""
    links = []
    for i, headers in enumerate(headers_of_records):
        if i >= limit:
            break
        ctx = trace.get_current_span(extract_context(headers)).get_span_context()
        if ctx.is_valid:
            links.append(trace.Link(ctx))
    return links
