// Package cluster is what several deferd instances need to act as one:
// the shard map that names the owner of every client id, the forwarder
// that sends an id's requests to its owner, and the listener demux that
// tells a peer's forwarded request from a client's.
//
// # The shard map
//
// Every instance is given the same ordered list of peers, the instances'
// HTTP addresses (deferd's --cluster-peers). The id space is split into
// Shards (256) logical shards:
//
//	shard(id) = FNV-1a 32 (hash/fnv New32a) of the id's bytes, mod 256
//	owner(shard s) = peers[s % len(peers)]
//
// so with peers [A, B, C] A owns shards 0, 3, 6, ..., 255, B 1, 4, ...,
// 253 and C 2, 5, ..., 254. A peer list of one is a cluster of one (every
// id is its own). The map depends on the list's order: the same list in
// another order is another map.
//
// # Fingerprint
//
// Fingerprint is the hex FNV-1a 64 of the peers joined by "\n", in order.
// Every request one instance forwards to another carries it in the
// PeerHeader (X-Deferd-Peers) header. An instance whose own fingerprint
// differs answers such a request 503 {"message":"PEER_LIST_MISMATCH"}
// (and logs it once per foreign fingerprint) rather than act on a map the
// two do not share; requests without the header are clients' and are
// never refused for it. Clients must not send the header.
//
// # Forwarding
//
// Forwarder keeps, per peer, one fasthttp.HostClient: keep-alive
// connections, at most Conns of them open (a request that finds none free
// waits up to Timeout for one), and a Timeout for each exchange. Do
// returns the owner's status, body and content type as they came, or an
// error when the owner could not be reached or did not answer in time:
// deferd then answers 503 {"message":"OWNER_UNAVAILABLE"}. Each peer's
// state (reachable, the last error and when) is kept from the outcomes of
// Do and of the polls deferd makes of its peers' /stats.
//
// # Demux
//
// A Demux sits on the HTTP listener. For every accepted connection it
// reads the first request's head (within a header timeout) and routes the
// connection: without PeerHeader to Public (the client-facing server,
// which forwards what another instance owns); with this instance's
// fingerprint to Peer (a server that handles everything locally, so a
// forwarded request is never forwarded again); with another fingerprint
// to a responder that answers every request on it 503
// PEER_LIST_MISMATCH. The decision is made once per connection: a
// Forwarder's connections carry the header on every request.
package cluster
