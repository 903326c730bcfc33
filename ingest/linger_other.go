//go:build !linux

package ingest

import "net"

// waitPeerClose is false: without Linux's POLLRDHUP the peer's close
// cannot be seen without reading what it sent before it.
func waitPeerClose(net.Conn) bool { return false }
