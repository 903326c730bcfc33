// Package journal is deferd's durable, segmented, group-committed
// append-only log of accepted, published and cancelled messages.
package journal
