package store

import (
	"strconv"
	"strings"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// keySlot is the Cluster hash slot of a key or sharded channel name, as
// Redis computes it: CRC16 (XMODEM) of the hash tag, the part between the
// first "{" and the next "}" when that part is not empty, or of the whole
// name.
func keySlot(name string) int {
	if i := strings.IndexByte(name, '{'); i >= 0 {
		if j := strings.IndexByte(name[i+1:], '}'); j > 0 {
			name = name[i+1 : i+1+j]
		}
	}
	return int(crc16(name) % clusterSlots)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), Redis' key hash.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slotTag returns a short hash tag whose slot is slot: "{tag}" in a name
// places the name on that slot, which is how a node gives each Cluster
// master a probe channel of its own. It is the smallest decimal number
// that hashes there (every slot has one below 110,000); it runs once per
// master per subscription.
func slotTag(slot int) string {
	for i := 0; ; i++ {
		if t := strconv.Itoa(i); int(crc16(t)%clusterSlots) == slot {
			return t
		}
	}
}
