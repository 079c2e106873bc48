package actors

import (
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// TracerProvider returns the tracer provider the broker reports to: the one
// it was given, else the global one. Connections inherit it.
func (b *Broker) TracerProvider() trace.TracerProvider { return b.tp }

// MeterProvider returns the meter provider the broker reports to: the one
// it was given, else the global one. Connections inherit it.
func (b *Broker) MeterProvider() metric.MeterProvider { return b.mp }
