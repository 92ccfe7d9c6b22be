package wire

// Owner picks the node that owns clientID by rendezvous (highest random
// weight) hashing: every node gets Score(node, clientID) and the highest wins;
// a tie, which needs a 64-bit collision, goes to the smaller node id. Adding or
// removing one of N nodes moves only the clients whose top score changed,
// about 1/N of them. nodes may be in any order; it returns "" when empty.
func Owner(clientID string, nodes []string) string {
	if i := OwnerIndex(clientID, nodes); i >= 0 {
		return nodes[i]
	}
	return ""
}

// OwnerIndex is Owner as an index into nodes, -1 when nodes is empty.
func OwnerIndex(clientID string, nodes []string) int {
	best, bestScore := -1, uint64(0)
	for i, n := range nodes {
		s := Score(n, clientID)
		if best < 0 || s > bestScore || (s == bestScore && n < nodes[best]) {
			best, bestScore = i, s
		}
	}
	return best
}

// Score is fmix64(FNV-1a-64(node || 0x00 || clientID)): FNV-1a for speed and
// portability, the MurmurHash3 64-bit finalizer so that nearby inputs spread
// over the whole range. docs/protocol.md lists test vectors.
func Score(node, clientID string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(node); i++ {
		h ^= uint64(node[i])
		h *= prime
	}
	h ^= 0 // the separator byte, so ("ab","c") and ("a","bc") differ
	h *= prime
	for i := 0; i < len(clientID); i++ {
		h ^= uint64(clientID[i])
		h *= prime
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
