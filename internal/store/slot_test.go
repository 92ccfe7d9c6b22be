package store

import "testing"

// Vectors from the Redis Cluster specification and CLUSTER KEYSLOT.
func TestKeySlot(t *testing.T) {
	for name, want := range map[string]int{
		"123456789":      12739, // crc16 0x31C3 % 16384
		"foo":            12182,
		"{user1000}.x":   keySlot("user1000"),
		"foo{}{bar}":     keySlot("foo{}{bar}"), // an empty tag is no tag: the whole name
		"foo{{bar}}zap":  keySlot("{bar"),
		"foo{bar}{zap}":  keySlot("bar"),
		"im:n:{n1}":      keySlot("n1"),
		"im:hist:{u:c1}": keySlot("u:c1"),
	} {
		if got := keySlot(name); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", name, got, want)
		}
	}
	if crc16("123456789") != 0x31C3 {
		t.Fatalf("crc16 check value %#x, want 0x31c3", crc16("123456789"))
	}
	for _, s := range []int{0, 1, 5460, 5461, 16383} {
		if got := keySlot("x{" + slotTag(s) + "}"); got != s {
			t.Errorf("slotTag(%d) lands on %d", s, got)
		}
	}
}
