package ingest

import (
	_ "github.com/VictoriaMetrics/metrics" // /metrics
	_ "github.com/valyala/fasthttp"        // the HTTP server
)
