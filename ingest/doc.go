// Package ingest is deferd's HTTP front door: an nsqd-compatible /pub and
// /mpub, plus delays, absolute due times, ids and cancel, on fasthttp.
package ingest
