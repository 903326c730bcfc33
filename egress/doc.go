// Package egress publishes due messages to nsqd in MPUB batches over several
// connections per nsqd, with retry and failover.
package egress
