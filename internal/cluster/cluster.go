package cluster

import (
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"
)

// Shards is the number of logical shards the id space is split into.
const Shards = 256

// PeerHeader carries the sender's Fingerprint on every forwarded request.
const PeerHeader = "X-Deferd-Peers"

// ShardOf is id's shard: FNV-1a 32 of its bytes, mod Shards. O(len(id)),
// no allocation.
func ShardOf(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % Shards)
}

// Map is the shard map of one peer list as seen by one of its peers. It is
// immutable and safe for concurrent use.
type Map struct {
	peers []string
	self  int
	fp    string
}

// ParsePeers splits peers (each entry may hold several comma-separated
// addresses) into the ordered list of host:port addresses, refusing an
// empty list, an empty or malformed entry and a duplicate.
func ParsePeers(peers []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, e := range peers {
		for _, p := range strings.Split(e, ",") {
			p = strings.TrimSpace(p)
			host, port, err := net.SplitHostPort(p)
			if err != nil || host == "" {
				return nil, fmt.Errorf("cluster: peer %q is not host:port", p)
			}
			if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
				return nil, fmt.Errorf("cluster: peer %q: port must be 1-65535", p)
			}
			if seen[p] {
				return nil, fmt.Errorf("cluster: peer %q listed twice", p)
			}
			seen[p] = true
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cluster: no peers")
	}
	return out, nil
}

// NewMap is the map of peers (as ParsePeers reads them) seen by self, which
// must be one of them, spelled the same.
func NewMap(peers []string, self string) (*Map, error) {
	ps, err := ParsePeers(peers)
	if err != nil {
		return nil, err
	}
	m := &Map{peers: ps, self: -1}
	for i, p := range ps {
		if p == self {
			m.self = i
		}
	}
	if m.self < 0 {
		return nil, fmt.Errorf("cluster: self %q is not among the peers %v", self, ps)
	}
	m.fp = Fingerprint(ps)
	return m, nil
}

// Fingerprint is the hex FNV-1a 64 of peers joined by "\n".
func Fingerprint(peers []string) string {
	h := fnv.New64a()
	h.Write([]byte(strings.Join(peers, "\n")))
	return fmt.Sprintf("%016x", h.Sum64())
}

// Peers is the ordered peer list (do not modify it).
func (m *Map) Peers() []string { return m.peers }

// Self is this instance's index in Peers.
func (m *Map) Self() int { return m.self }

// Fingerprint is the peer list's Fingerprint.
func (m *Map) Fingerprint() string { return m.fp }

// OwnerOfShard is the index of the peer owning shard s: s % len(Peers).
func (m *Map) OwnerOfShard(s int) int { return s % len(m.peers) }

// Owner is the index of the peer owning id. O(len(id)).
func (m *Map) Owner(id string) int { return m.OwnerOfShard(ShardOf(id)) }

// Mine reports whether this instance owns id.
func (m *Map) Mine(id string) bool { return m.Owner(id) == m.self }

// ShardsOf lists the shards peer i owns, ascending.
func (m *Map) ShardsOf(i int) []int {
	var out []int
	for s := i; s < Shards; s += len(m.peers) {
		out = append(out, s)
	}
	return out
}
